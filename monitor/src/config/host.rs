//! This machine, as events and MQTT topics name it.

use serde::Serialize;

/// This machine, as events name it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Host {
    /// /etc/machine-id when readable, else the name.
    pub id: String,
    pub name: String,
}

impl Host {
    /// The configured name or the kernel's hostname; the machine id.
    pub fn detect(id: Option<&str>, name: Option<&str>) -> Host {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let name = name
            .map(str::to_owned)
            .or_else(|| read("/proc/sys/kernel/hostname"))
            .unwrap_or_else(|| "localhost".to_owned());
        let id = id
            .map(str::to_owned)
            .or_else(|| read("/etc/machine-id"))
            .unwrap_or_else(|| name.clone());
        Host { id, name }
    }
}
