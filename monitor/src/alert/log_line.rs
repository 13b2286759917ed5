//! The alert's `key=value` log line (journald, fail2ban, log pipelines): one line per alert,
//! keys in a fixed order, the quoted sentence last.

use super::document::{Endpoint, Event, wire_name};

/// A stable `key=value` line for logs (journald, fail2ban): every value without spaces
/// except the quoted message, which comes last.
pub fn log_fields(ev: &Event) -> String {
    let opt = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("-").replace(' ', "_");
    let p = ev.process.as_ref();
    let alert = ev.alert.as_ref().map_or("-".to_owned(), |a| {
        format!(
            "{}/{}",
            a.code.map_or("?".to_owned(), |c| c.to_string()),
            a.name.as_deref().unwrap_or("encrypted")
        )
    });
    format!(
        "kind={} cause={} process={} pid={} exe={} unit={} role={} peer_ip={} peer_port={} local_port={} service={} sni={} alert={} sender={} stage={} count={} event_id={} message={:?}",
        wire_name(&ev.kind),
        ev.cause,
        opt(p.map(|p| p.comm.as_str())),
        p.map_or("-".to_owned(), |p| p.pid.to_string()),
        opt(p.and_then(|p| p.exe.as_deref())),
        opt(p.and_then(|p| p.unit.as_deref())),
        wire_name(&ev.role),
        opt(ev.peer.as_ref().map(|e| e.ip.as_str())),
        ev.peer
            .as_ref()
            .map_or("-".to_owned(), |e| e.port.to_string()),
        ev.local
            .as_ref()
            .map_or("-".to_owned(), |e| e.port.to_string()),
        ev.service
            .as_ref()
            .map_or("-".to_owned(), Endpoint::to_string),
        opt(ev.sni.as_deref()),
        alert,
        ev.alert.as_ref().map_or("-", |a| a.sender.as_str()),
        opt(ev.stage.as_deref()),
        ev.count,
        ev.event_id,
        ev.message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::document::{
        from_verdict,
        test_support::{POLICY, curl, failed_verdict},
    };
    use crate::config::Host;

    #[test]
    fn log_line_is_stable_key_value_with_the_peer_ip() {
        let host = Host::detect(None, Some("h"));
        let ev = from_verdict(&failed_verdict(), Some(&curl()), &host, POLICY).unwrap();
        let line = log_fields(&ev);
        assert!(
            line.starts_with(
                "kind=handshake_failure cause=protocol_version_mismatch process=curl pid=4312 exe=/usr/bin/curl unit=session-1.scope role=client peer_ip=127.0.0.2 peer_port=8443 local_port=40122 service=127.0.0.2:8443 sni=- alert=70/protocol_version sender=server stage=client_hello count=1 event_id="
            ),
            "{line}"
        );
        assert!(line.contains(" message=\"curl (pid 4312)"), "{line}");
    }
}
