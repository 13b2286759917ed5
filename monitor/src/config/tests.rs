use super::*;

fn err(text: &str) -> String {
    parse(text, "/etc/tlsmon/tlsmon.toml")
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn mqtt_brokers_parse_with_default_ports_and_bad_ones_name_the_line() {
    let b = |s: &str| s.parse::<Broker>();
    assert_eq!(
        b("mqtt://127.0.0.1"),
        Ok(Broker {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1883
        })
    );
    assert_eq!(b("mqtts://broker.example:9883").map(|b| b.port), Ok(9883));
    assert_eq!(b("mqtts://broker.example").map(|b| b.port), Ok(8883));
    assert_eq!(b("mqtt://[::1]:1884").map(|b| b.host), Ok("::1".into()));
    for bad in [
        "http://x",
        "mqtt://",
        "mqtt://h:0",
        "mqtt://h:70000",
        "broker:1883",
    ] {
        assert!(b(bad).is_err(), "{bad}");
    }
    let e = err("[mqtt]\nbroker = \"mqtt://h\"\nca_file = \"/ca.pem\"\n");
    assert!(e.contains(":3:1: mqtt.ca_file needs a TLS broker"), "{e}");
    let e = err("[mqtt]\nprefix = \"a/b\"\n");
    assert!(e.contains(":2:") && e.contains("MQTT topic level"), "{e}");
    let e = err("[mqtt]\ncert_file = \"/c.pem\"\n");
    assert!(e.contains("go together"), "{e}");
}

#[test]
fn empty_file_is_the_builtin_configuration() {
    assert_eq!(parse("", "x").unwrap(), Config::default());
}

#[test]
fn shipped_example_is_valid_and_equals_the_defaults() {
    assert_eq!(parse(EXAMPLE, "tlsmon.toml").unwrap(), Config::default());
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = err("[alerts]\nwindow_secs = 60\nwindw = 3\n");
    assert!(e.starts_with("/etc/tlsmon/tlsmon.toml:3:1: "), "{e}");
    assert!(e.contains("unknown field `windw`"), "{e}");
}

#[test]
fn unknown_section_is_an_error() {
    let e = err("[alert]\nwindow_secs = 60\n");
    assert!(e.contains(":1:") && e.contains("`alert`"), "{e}");
}

#[test]
fn bad_values_name_their_line() {
    let e = err("[capture]\nring_bytes = 1000\n");
    assert!(e.contains(":2:") && e.contains("power of two"), "{e}");
    let e = err("[alerts]\nwindow_secs = \"five\"\n");
    assert!(e.contains(":2:") && e.contains("invalid type"), "{e}");
    let e = err("[alerts]\nwindow_secs = 0\n");
    assert!(e.contains("between 1 and 86400"), "{e}");
    let e = err("[filters]\n\nexclude_peers = [\"10.0.0.0/33\"]\n");
    assert!(e.contains(":3:") && e.contains("10.0.0.0/33"), "{e}");
    let e = err("[status]\nlisten = \"localhost\"\n");
    assert!(e.contains(":2:") && e.contains("host:port"), "{e}");
}

#[test]
fn non_loopback_listen_needs_an_explicit_opt_in() {
    let e = err("[status]\nlisten = \"0.0.0.0:9464\"\n");
    assert!(e.contains(":2:") && e.contains("allow_non_loopback"), "{e}");
    let c = parse(
        "[status]\nlisten = \"0.0.0.0:9464\"\nallow_non_loopback = true\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.status.listen.to_string(), "0.0.0.0:9464");
    let c = parse("[status]\nlisten = \"unix:/run/tlsmon/s.sock\"\n", "x").unwrap();
    assert_eq!(
        c.status.listen,
        Listen::Unix(PathBuf::from("/run/tlsmon/s.sock"))
    );
}

#[test]
fn the_status_socket_is_on_by_default_and_can_be_turned_off() {
    let c = parse("", "x").unwrap();
    assert_eq!(
        c.status.socket,
        Some(PathBuf::from("/run/tlsmon/status.sock"))
    );
    assert_eq!(c.status.token_file, None);
    let c = parse("[status]\nsocket = \"\"\n", "x").unwrap();
    assert_eq!(c.status.socket, None);
    let e = err("[status]\nsocket = \"status.sock\"\n");
    assert!(e.contains(":2:") && e.contains("absolute"), "{e}");
    let c = parse("[status]\ntoken_file = \"/etc/tlsmon/status.token\"\n", "x").unwrap();
    assert_eq!(
        c.status.token_file,
        Some(PathBuf::from("/etc/tlsmon/status.token"))
    );
}

#[test]
fn aggregate_section_parses_store_urls_and_hides_passwords() {
    let c = parse(
        "[aggregate]\nstore = \"postgres://fleet:s3cret@127.0.0.1:5432/fleet\"\ngroup = \"g1\"\n",
        "x",
    )
    .unwrap();
    assert_eq!(
        c.aggregate.store.to_string(),
        "postgres://fleet:***@127.0.0.1:5432/fleet"
    );
    assert!(!format!("{:?}", c.aggregate).contains("s3cret"));
    for (url, shown) in [
        (
            "postgres://fleet@db/fleet?sslmode=require&password=s3cret&x=1",
            "postgres://fleet@db/fleet?sslmode=require&password=***&x=1",
        ),
        (
            "postgresql://fleet:p@ss:s3cret@db:5432/fleet?PASSWORD=s3cret",
            "postgresql://fleet:***@db:5432/fleet?PASSWORD=***",
        ),
        (
            "host=db user=fleet password='s3 \\'cret' dbname=fleet",
            "host=db user=fleet password=*** dbname=fleet",
        ),
        (
            "host=db password = s3cret sslmode=verify-full",
            "host=db password = *** sslmode=verify-full",
        ),
    ] {
        assert_eq!(values::redacted_postgres(url), shown, "{url}");
    }
    assert_eq!(c.aggregate.group.0, "g1");
    let d = Config::default().aggregate;
    assert_eq!(
        d.store.to_string(),
        "sqlite:/var/lib/tlsmon-aggregate/fleet.db"
    );
    assert_eq!(d.listen.to_string(), "127.0.0.1:9465");
    let e = err("[aggregate]\nstore = \"fleet.db\"\n");
    assert!(
        e.contains(":2:") && e.contains("sqlite:/absolute/path"),
        "{e}"
    );
    let e = err("[aggregate]\ngroup = \"a/b\"\n");
    assert!(e.contains("topic level"), "{e}");
    let e = err("[aggregate]\nlisten = \"0.0.0.0:9465\"\n");
    assert!(
        e.contains(":2:") && e.contains("aggregate.allow_non_loopback"),
        "{e}"
    );
}

#[test]
fn cidrs_match_v4_v6_and_mapped_addresses() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(c.contains("10.1.2.3".parse().unwrap()));
    assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    let one: Cidr = "::1".parse().unwrap();
    assert!(one.contains("::1".parse().unwrap()));
    let host_bits: Cidr = "192.168.1.7/24".parse().unwrap();
    assert!(host_bits.contains("192.168.1.200".parse().unwrap()));
}

#[test]
fn restart_is_needed_only_for_capture_store_status_host() {
    let a = Config::default();
    let mut b = a.clone();
    b.filters.exclude_ports.push(22);
    b.alerts.window_secs = Bounded(10);
    assert!(needs_restart(&a, &b).is_empty());
    b.capture.tls_ports.push(8444);
    b.store.retention_days = Bounded(2);
    assert_eq!(needs_restart(&a, &b), vec!["capture", "store"]);
}

#[test]
fn missing_explicit_file_is_an_error_naming_it() {
    let e = load(Some(Path::new("/nonexistent/tlsmon.toml")))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/tlsmon.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn a_password_readable_by_every_local_user_is_named() {
    let src = Source::File(PathBuf::from("/etc/tlsmon/tlsmon.toml"));
    let with_password = parse(
        "[mqtt]\nbroker = \"mqtt://b:1883\"\npassword = \"s\"\n",
        "x",
    )
    .unwrap();
    let world = |_: &Path| Some(0o100644);
    let group = |_: &Path| Some(0o100640);
    let w = readable_secrets(&with_password, &src, world);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("/etc/tlsmon/tlsmon.toml holds a password"),
        "{w:?}"
    );
    assert!(readable_secrets(&with_password, &src, group).is_empty());
    assert!(readable_secrets(&Config::default(), &src, world).is_empty());
    let url = parse(
        "[aggregate]\nstore = \"postgres://fleet@db/fleet?password=s\"\n",
        "x",
    )
    .unwrap();
    assert_eq!(readable_secrets(&url, &src, world).len(), 1);
    let file = parse(
        "[mqtt]\nbroker = \"mqtt://b:1883\"\npassword_file = \"/etc/tlsmon/pw\"\n",
        "x",
    )
    .unwrap();
    let w = readable_secrets(&file, &src, world);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("mqtt.password_file"), "{w:?}");
}
