use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

fn main() {
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 2)]
    struct Local {
        n: u32,
    }

    impl Process for Local {
        fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
            self.n += 1;
            Ok(())
        }
    }

    let expected = Config::default().runs(2);
    assert_eq!(format!("{:?}", Local::config()), format!("{expected:?}"));
}
