//! Channels (placeholder while the foundation settles).
use crate::segment::{KindHooks, Region};

fn reclaim(_region: &Region, _slot: u32) {}
fn teardown(_region: &Region) {}

pub(crate) static HOOKS: KindHooks = KindHooks { reclaim, teardown };
