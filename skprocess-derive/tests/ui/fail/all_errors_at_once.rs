use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

// Every problem is reported in one pass, and the type still works as a
// process for the rest of the program, so no error follows from them.
#[derive(Process, Serialize, Deserialize)]
#[process(
    runs = 0,
    lives = 2,
    timeout(run = "5 sec", postrun = "soon"),
    lives = 3,
    jion_in = "1m"
)]
struct Everything;

impl Process for Everything {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {
    let _config: Config = Everything::config();
}
