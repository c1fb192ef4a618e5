use std::time::Duration;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize)]
#[process(
    runs = 5,
    lives = 3,
    timeout(run = "30s", prerun = "500ms", postrun = "1s", onfinish = "2m 30s"),
    join_in = "10m"
)]
struct Squarer {
    x: u64,
    total: u64,
}

impl Process for Squarer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.total += self.x * self.x;
        Ok(())
    }
}

// Keys may be split over several attributes, in any order.
#[derive(Process, Serialize, Deserialize)]
#[process(join_in = "1h")]
#[process(
    timeout(onfinish = "250ms"),
    runs = 18446744073709551615,
    lives = 4294967295
)]
struct Split;

impl Process for Split {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

fn main() {
    let expected = Config::default()
        .runs(5)
        .lives(3)
        .timeout(Hook::Run, Duration::from_secs(30))
        .timeout(Hook::Prerun, Duration::from_millis(500))
        .timeout(Hook::Postrun, Duration::from_secs(1))
        .timeout(Hook::Onfinish, Duration::from_secs(150))
        .join_in(Duration::from_secs(600));
    assert_eq!(format!("{:?}", Squarer::config()), format!("{expected:?}"));

    let expected = Config::default()
        .runs(u64::MAX)
        .lives(u32::MAX)
        .timeout(Hook::Onfinish, Duration::from_millis(250))
        .join_in(Duration::from_secs(3600));
    assert_eq!(format!("{:?}", Split::config()), format!("{expected:?}"));
}
