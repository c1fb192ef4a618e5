use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize)]
#[process(run = 5)]
struct Typo;

impl Process for Typo {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(lives = 2, retries = 3)]
struct Unknown;

impl Process for Unknown {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {}
