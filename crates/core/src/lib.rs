//! The residency core: everything a reviewer must read to trust that an
//! upload goes only where its origin's data may be stored — and nothing else.
//!
//! No async runtime, no HTTP stack, no sockets or files: pure functions over
//! loaded data, table-tested. In the order a decision uses them:
//! [`origin`] finds the client address (PROXY source, peer, or a trusted
//! peer's `X-Forwarded-For`), [`geo`] maps it to a [`country`], [`policy`]
//! maps the country to a jurisdiction and its permitted data centres, and
//! [`decision`] puts the steps together and picks an upstream that is up.
//! [`tenant`] recognises customers pinned to a jurisdiction, whose pin
//! decides instead of GeoIP.
//! [`report`] collects configuration problems; [`hex`] is the one hex codec.

pub mod country;
pub mod decision;
pub mod geo;
pub mod hex;
pub mod origin;
pub mod policy;
pub mod report;
pub mod tenant;
