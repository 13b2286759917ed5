//! Which judged connections the daemon reports (config `[filters]`, reloadable). Pure.

use std::path::Path;

use crate::{capture::process::ProcessInfo, config::Filters, flow::ConnInfo};

/// Whether a connection passes the filters. Empty include lists admit everything; an
/// exclude always wins.
pub fn admits(f: &Filters, process: Option<&ProcessInfo>, conn: Option<&ConnInfo>) -> bool {
    let process_names = |p: &ProcessInfo| {
        let exe = p.exe.as_deref();
        let base = exe
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .map(str::to_owned);
        [
            Some(p.comm.clone()),
            exe.map(|e| e.display().to_string()),
            base,
        ]
    };
    let matches_process = |list: &[String]| {
        process.is_some_and(|p| {
            process_names(p)
                .iter()
                .flatten()
                .any(|n| list.iter().any(|w| w == n))
        })
    };
    let ports = conn.map(|c| [c.local.port(), c.peer.port()]);
    let matches_port = |list: &[u16]| ports.is_some_and(|ps| ps.iter().any(|p| list.contains(p)));
    let matches_peer = |list: &[crate::config::Cidr]| {
        conn.is_some_and(|c| list.iter().any(|n| n.contains(c.peer.ip())))
    };
    let matches_cgroup = |list: &[String]| {
        process
            .and_then(|p| p.unit.as_deref())
            .is_some_and(|u| list.iter().any(|w| u == w || u.starts_with(w.as_str())))
    };
    let included = (f.include_processes.is_empty() || matches_process(&f.include_processes))
        && (f.include_ports.is_empty() || matches_port(&f.include_ports))
        && (f.include_peers.is_empty() || matches_peer(&f.include_peers))
        && (f.include_cgroups.is_empty() || matches_cgroup(&f.include_cgroups));
    let excluded = matches_process(&f.exclude_processes)
        || matches_port(&f.exclude_ports)
        || matches_peer(&f.exclude_peers)
        || matches_cgroup(&f.exclude_cgroups);
    included && !excluded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Role;

    fn nginx() -> ProcessInfo {
        ProcessInfo {
            pid: 812,
            tgid: 812,
            comm: "nginx".into(),
            exe: Some("/usr/sbin/nginx".into()),
            cmdline: None,
            uid: Some(33),
            unit: Some("nginx.service".into()),
            container: None,
        }
    }

    fn conn(peer: &str) -> ConnInfo {
        ConnInfo {
            role: Role::Server,
            local: "10.0.0.1:443".parse().unwrap(),
            peer: peer.parse().unwrap(),
            socket_cgroup_id: 1,
        }
    }

    fn filters(toml: &str) -> Filters {
        crate::config::parse(&format!("[filters]\n{toml}"), "t")
            .unwrap()
            .filters
    }

    #[test]
    fn no_filters_admit_everything_even_unknown_processes() {
        let f = Filters::default();
        assert!(admits(&f, Some(&nginx()), Some(&conn("10.1.1.1:5000"))));
        assert!(admits(&f, None, None));
    }

    #[test]
    fn process_matches_comm_exe_or_basename() {
        for name in ["nginx", "/usr/sbin/nginx"] {
            let f = filters(&format!("exclude_processes = [\"{name}\"]"));
            assert!(!admits(&f, Some(&nginx()), Some(&conn("10.1.1.1:5000"))));
        }
        let f = filters("include_processes = [\"curl\"]");
        assert!(!admits(&f, Some(&nginx()), Some(&conn("10.1.1.1:5000"))));
        assert!(!admits(&f, None, Some(&conn("10.1.1.1:5000"))));
    }

    #[test]
    fn ports_peers_and_cgroups() {
        let c = conn("192.168.7.9:5000");
        assert!(!admits(
            &filters("exclude_ports = [443]"),
            Some(&nginx()),
            Some(&c)
        ));
        assert!(!admits(
            &filters("exclude_peers = [\"192.168.0.0/16\"]"),
            Some(&nginx()),
            Some(&c)
        ));
        assert!(admits(
            &filters("include_peers = [\"192.168.0.0/16\"]"),
            Some(&nginx()),
            Some(&c)
        ));
        assert!(!admits(
            &filters("include_peers = [\"10.0.0.0/8\"]"),
            Some(&nginx()),
            Some(&c)
        ));
        assert!(!admits(
            &filters("exclude_cgroups = [\"nginx.service\"]"),
            Some(&nginx()),
            Some(&c)
        ));
        assert!(admits(
            &filters("include_cgroups = [\"nginx\"]"),
            Some(&nginx()),
            Some(&c)
        ));
    }

    #[test]
    fn exclude_wins_over_include() {
        let f = filters("include_processes = [\"nginx\"]\nexclude_ports = [443]");
        assert!(!admits(&f, Some(&nginx()), Some(&conn("10.1.1.1:5000"))));
    }
}
