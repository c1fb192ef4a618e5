mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize, Clone, Debug)]
#[process(runs = 2)]
struct Sq {
    x: u64,
    total: u64,
    pid: u32,
}

impl Process for Sq {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.total += self.x * self.x;
        self.pid = ctx.pid();
        Ok(())
    }
}

#[test]
fn smoke() {
    let pool = Pool::new(2).unwrap();
    let done = pool
        .map((0..40).map(|x| Sq {
            x,
            total: 0,
            pid: 0,
        }))
        .unwrap();
    for (i, d) in done.iter().enumerate() {
        assert_eq!(d.total, 2 * (i as u64) * (i as u64));
    }
    let v: Vec<u64> = pool.map_fn(|x: u64| x * 2, 0..100_000u64).unwrap();
    assert_eq!(v.len(), 100_000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == 2 * i as u64));
    eprintln!("pids {:?}", pool.pids());
}
