use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 5, lives = 2, runs = 6)]
struct Twice;

impl Process for Twice {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(timeout(run = "1s"))]
#[process(timeout(prerun = "1s", run = "2s"))]
struct TwiceAcrossAttributes;

impl Process for TwiceAcrossAttributes {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(timeout(run = "1s", postrun = "1s", run = "2s"))]
struct HookTwice;

impl Process for HookTwice {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {}
