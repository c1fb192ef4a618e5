use skprocess::prelude::*;

#[derive(Process)]
struct NotSerde {
    x: u64,
}

impl Process for NotSerde {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {}
