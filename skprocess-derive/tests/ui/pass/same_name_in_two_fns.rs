use serde::{Deserialize, Serialize};
use skprocess::__private::Described;
use skprocess::prelude::*;

fn first() -> (&'static str, &'static str) {
    #[derive(Process, Serialize, Deserialize)]
    struct Worker;

    impl Process for Worker {
        fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
            Ok(())
        }
    }

    (<Worker as Described>::NAME, <Worker as Described>::ID)
}

fn second() -> (&'static str, &'static str) {
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 1)]
    struct Worker {
        n: u8,
    }

    impl Process for Worker {
        fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
            Ok(())
        }
    }

    (<Worker as Described>::NAME, <Worker as Described>::ID)
}

fn main() {
    let (first_name, first_id) = first();
    let (second_name, second_id) = second();
    // One module, so one name; the ids tell the two types apart.
    assert_eq!(first_name, second_name);
    assert!(first_name.ends_with("::Worker"), "{first_name}");
    assert_ne!(first_id, second_id);
    assert!(first_id.starts_with(first_name), "{first_id}");
    assert!(
        first_id.ends_with("same_name_in_two_fns.rs:7:12"),
        "{first_id}"
    );
    assert!(
        second_id.ends_with("same_name_in_two_fns.rs:21:12"),
        "{second_id}"
    );
}
