use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;

#[derive(Process, Serialize, Deserialize)]
struct Wrapper<T> {
    inner: T,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Process for Wrapper<T> {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[derive(Process, Serialize, Deserialize)]
struct Borrowed<'a> {
    name: &'a str,
}

#[derive(Process, Serialize, Deserialize)]
struct Fixed<const N: usize> {
    bytes: Vec<u8>,
}

fn main() {}
