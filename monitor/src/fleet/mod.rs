//! The fleet side: `tlsmon aggregate` ([`aggregate`]: shared-subscription consumer, store
//! thread, `/v1/fleet`), what hosts publish parsed ([`message`]), every event kept once in
//! SQLite or PostgreSQL ([`store`] over [`sql`]), and the view operators read ([`view`]; as
//! a web page: [`page`]).
//! It reads documents, never capture or kernel types.

pub mod aggregate;
pub mod message;
pub mod page;
pub mod sql;
pub mod store;
pub mod view;
