use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize)]
#[process(timeout(run = "30x"), join_in = "10 minutes or so")]
struct Slow;

impl Process for Slow {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(timeout(prerun = "0s"), join_in = "30")]
struct Instant;

impl Process for Instant {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {}
