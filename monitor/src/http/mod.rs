//! HTTP plumbing that both services share: the server side ([`serve`]: listeners, the
//! OpenMetrics answer, `since=` durations) and the one-shot client the CLI uses
//! ([`client`]). Routes live with their service: `daemon::endpoint`, `fleet::endpoint`.

pub mod client;
pub mod serve;
