use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize)]
struct Plain {
    label: String,
}

impl Process for Plain {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

// An empty attribute is the same as none.
#[derive(Process, Serialize, Deserialize)]
#[process()]
struct Empty;

impl Process for Empty {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {
    let default = format!("{:?}", Config::default());
    assert_eq!(format!("{:?}", Plain::config()), default);
    assert_eq!(format!("{:?}", Empty::config()), default);
}
