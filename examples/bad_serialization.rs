//! A value postcard cannot encode, what the error says, and the way out.
//!
//! Process values and messages cross processes with postcard, which is
//! compact and fast but not self-describing: `#[serde(flatten)]` and
//! `#[serde(untagged)]` cannot be expressed in it. skprocess reports that
//! with an error naming the type and the fix; wrapping the value in
//! `skprocess::Json` carries it as JSON instead.
//!
//! Run it with `cargo run --example bad_serialization`.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::Json;
use std::collections::BTreeMap;

/// Extra fields collected with `flatten`: fine for JSON, not for postcard.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Record {
    id: u64,
    #[serde(flatten)]
    extra: BTreeMap<String, String>,
}

/// Takes records as they are; fails to start.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Plain {
    records: Vec<Record>,
}

impl Process for Plain {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

/// The same records inside `Json`: starts and runs.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Wrapped {
    records: Json<Vec<Record>>,
    seen: usize,
}

impl Process for Wrapped {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.seen = self.records.len();
        // Messages take the same way out.
        ctx.tell(&Json(self.records[0].clone()))?;
        Ok(())
    }
}

fn main() -> skprocess::Result<()> {
    let records = vec![Record {
        id: 1,
        extra: BTreeMap::from([("colour".into(), "blue".into())]),
    }];

    match (Plain {
        records: records.clone(),
    })
    .start()
    {
        Ok(_) => unreachable!("postcard cannot encode a flattened map"),
        Err(e) => println!("without Json: {e}"),
    }

    let mut h = Wrapped {
        records: Json(records.clone()),
        seen: 0,
    }
    .start()?;
    let first: Option<Json<Record>> = h.listen(std::time::Duration::from_secs(5))?;
    let done = h.wait()?;
    assert_eq!(done.seen, 1);
    assert_eq!(first.map(Json::into_inner).as_ref(), records.first());
    println!(
        "with Json: the child saw {} record(s) and sent back {:?}",
        done.seen, done.records[0]
    );
    Ok(())
}
