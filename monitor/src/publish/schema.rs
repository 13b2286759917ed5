//! JSON Schemas of what tlsmon publishes, generated from the Rust types (schemars) and
//! committed under docs/schema/; a test keeps the committed files equal to the generated
//! ones (`TLSMON_BLESS=1 cargo test -p monitor schema` rewrites them) and the MQTT end-to-end
//! test validates real published messages against them.

use schemars::{JsonSchema, schema_for};

use super::documents::{StatusDoc, SummaryDoc};
use crate::{alert::Event, store::outbox::Gap};

fn pretty<T: JsonSchema>() -> String {
    let mut s = serde_json::to_string_pretty(&schema_for!(T)).unwrap_or_default();
    s.push('\n');
    s
}

/// (file name under docs/schema/, schema text) for every published document.
pub fn documents() -> Vec<(&'static str, String)> {
    vec![
        ("event.schema.json", pretty::<Event>()),
        ("gap.schema.json", pretty::<Gap>()),
        ("summary.schema.json", pretty::<SummaryDoc<'static>>()),
        ("status.schema.json", pretty::<StatusDoc<'static>>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schemas_are_the_generated_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema");
        let bless = std::env::var_os("TLSMON_BLESS").is_some();
        for (name, text) in documents() {
            let path = dir.join(name);
            if bless {
                std::fs::create_dir_all(&dir).expect("mkdir docs/schema");
                std::fs::write(&path, &text).expect("write schema");
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} is stale: run TLSMON_BLESS=1 cargo test -p monitor schema",
                path.display()
            );
        }
        let event: serde_json::Value =
            serde_json::from_str(&documents()[0].1).expect("schema JSON");
        assert!(event["properties"]["event_id"].is_object(), "{event}");
        assert!(
            event["properties"].get("first_ms").is_none(),
            "skipped fields stay out"
        );
    }
}
