use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize)]
#[process(lives = 0)]
struct Mortal;

impl Process for Mortal {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 0, lives = 4294967296)]
struct Nothing;

impl Process for Nothing {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {}
