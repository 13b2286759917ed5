//! The connection to an MQTT broker that the publisher and the aggregator share: broker
//! address and topics of this host, credentials and TLS files read at start (so errors
//! surface then), rumqttc options, and the event-loop driver that reconnects with backoff.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use rumqttc::{
    ConnectionError, Event, EventLoop, MqttOptions, Packet, TlsConfiguration, Transport,
};

use crate::config::{Broker, Config, Host};

const BACKOFF_MAX: Duration = Duration::from_secs(30);
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The topics of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub events: String,
    pub summary: String,
    pub status: String,
}

impl Topics {
    pub fn new(prefix: &str, site: &str, host_id: &str) -> Topics {
        let base = format!("{prefix}/v1/{site}/{host_id}");
        Topics {
            events: format!("{base}/events"),
            summary: format!("{base}/summary"),
            status: format!("{base}/status"),
        }
    }
}

/// Everything the publisher needs, files already read (errors surface at start).
pub struct Settings {
    pub broker: Broker,
    /// The first topic level.
    pub prefix: String,
    /// This host's topic level (the host id, made safe).
    pub host_level: String,
    pub topics: Topics,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    /// For mqtts:// only.
    pub tls: Option<TlsFiles>,
    pub keepalive: Duration,
    pub summary_interval: Duration,
    pub host: Host,
    pub site: String,
}

/// PEM contents: the CA bundle, and the client certificate and key when configured.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl Settings {
    /// `None` when no broker is configured (MQTT off).
    pub fn from_config(cfg: &Config, host: &Host) -> anyhow::Result<Option<Settings>> {
        let m = &cfg.mqtt;
        let Some(broker) = m.broker.clone() else {
            return Ok(None);
        };
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).with_context(|| format!("mqtt.{what}: cannot read {}", p.display()))
        };
        let password = match (&m.password, &m.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => {
                let text = String::from_utf8(read("password_file", f)?)
                    .with_context(|| format!("mqtt.password_file {}: not UTF-8", f.display()))?;
                Some(text.lines().next().unwrap_or("").to_owned())
            }
            (None, None) => None,
        };
        let credentials = match (&m.username, password) {
            (Some(u), p) => Some((u.clone(), p.unwrap_or_default())),
            (None, Some(_)) => anyhow::bail!("mqtt: a password needs mqtt.username"),
            (None, None) => None,
        };
        let tls = if broker.tls {
            let ca = match &m.ca_file {
                Some(p) => read("ca_file", p)?,
                None => read("ca_file (system default)", &PathBuf::from(SYSTEM_CA))?,
            };
            let client = match (&m.cert_file, &m.key_file) {
                (Some(c), Some(k)) => Some((read("cert_file", c)?, read("key_file", k)?)),
                _ => None,
            };
            Some(TlsFiles { ca, client })
        } else {
            None
        };
        let site = cfg
            .host
            .site
            .as_ref()
            .map_or("default", |s| s.0.as_str())
            .to_owned();
        let host_id = sanitize_level(&host.id);
        Ok(Some(Settings {
            topics: Topics::new(&m.prefix.0, &site, &host_id),
            prefix: m.prefix.0.clone(),
            client_id: m
                .client_id
                .clone()
                .unwrap_or_else(|| format!("tlsmon-{host_id}")),
            host_level: host_id,
            broker,
            credentials,
            tls,
            keepalive: Duration::from_secs(m.keepalive_secs.get()),
            summary_interval: Duration::from_secs(m.summary_interval_secs.get()),
            host: host.clone(),
            site,
        }))
    }

    /// Broker address, keepalive, credentials and TLS: what every tlsmon client shares.
    pub fn connection_options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.broker.host, self.broker.port);
        o.set_keep_alive(self.keepalive)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        if let Some(t) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: t.ca.clone(),
                alpn: None,
                client_auth: t.client.clone(),
            }));
        }
        o
    }
}

/// A host id may contain characters a topic level cannot.
fn sanitize_level(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Forwards the event loop's notifications (reconnecting with backoff after errors).
pub async fn drive(
    mut el: EventLoop,
    tx: tokio::sync::mpsc::Sender<Result<Event, String>>,
    broker: String,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match el.poll().await {
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                    backoff = Duration::from_millis(500);
                }
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let msg = describe(&e, &broker, backoff);
                if tx.send(Err(msg)).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

pub fn describe(e: &ConnectionError, broker: &str, retry: Duration) -> String {
    let what = match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the broker refused the connection ({code:?}){}",
            if matches!(
                code,
                rumqttc::ConnectReturnCode::BadUserNamePassword
                    | rumqttc::ConnectReturnCode::NotAuthorized
            ) {
                ": check mqtt.username and the password"
            } else {
                ""
            }
        ),
        other => other.to_string(),
    };
    format!("MQTT broker {broker}: {what}; retrying in {retry:?}, events stay in the outbox")
}

/// rustls needs one crypto provider for the process; ring is the one we build.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_design_and_host_ids_are_made_safe() {
        let t = Topics::new("tlsmon", "fra1", &sanitize_level("web/01+#"));
        assert_eq!(t.events, "tlsmon/v1/fra1/web_01__/events");
        assert_eq!(t.status, "tlsmon/v1/fra1/web_01__/status");
        assert_eq!(t.summary, "tlsmon/v1/fra1/web_01__/summary");
    }

    #[test]
    fn settings_read_files_and_refuse_a_password_without_user() {
        let host = Host {
            id: "m".into(),
            name: "h".into(),
        };
        let off = Config::default();
        assert!(Settings::from_config(&off, &host).expect("off").is_none());
        let cfg = crate::config::parse(
            "[mqtt]\nbroker = \"mqtt://127.0.0.1\"\npassword = \"x\"\n",
            "t",
        )
        .expect("parse");
        let e = Settings::from_config(&cfg, &host).err().expect("refused");
        assert!(e.to_string().contains("needs mqtt.username"), "{e}");
        let cfg = crate::config::parse(
            "[mqtt]\nbroker = \"mqtts://b\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "t",
        )
        .expect("parse");
        let e = Settings::from_config(&cfg, &host).err().expect("refused");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let cfg = crate::config::parse("[mqtt]\nbroker = \"mqtt://127.0.0.1:1884\"\n", "t")
            .expect("parse");
        let s = Settings::from_config(&cfg, &host).expect("ok").expect("on");
        assert_eq!(s.topics.events, "tlsmon/v1/default/m/events");
        assert_eq!(s.client_id, "tlsmon-m");
    }
}
