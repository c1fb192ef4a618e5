use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize)]
#[process(runs = "5", lives = 1.5, join_in = 10, timeout = "1s")]
struct Kinds;

impl Process for Kinds {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = -1, timeout(run = 30))]
struct Signs;

impl Process for Signs {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process]
struct Bare;

impl Process for Bare {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs 5)]
struct Malformed;

impl Process for Malformed {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {}
