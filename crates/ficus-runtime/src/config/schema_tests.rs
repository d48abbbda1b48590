//! The editor schemas: the committed copies in docs/schemas are what the config types generate,
//! every bundled example validates, and a misspelt key or a wrong value does not.

use serde_json::Value;

use super::config_schema;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn toml_as_json(text: &str) -> Value {
    let table: toml::Table = toml::from_str(text).unwrap();
    serde_json::to_value(table).unwrap()
}

fn committed(name: &str) -> Value {
    let path = format!("{ROOT}/docs/schemas/{name}");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn the_committed_schemas_are_what_the_types_generate() {
    for (name, generated) in [
        ("ficus.toml.schema.json", config_schema()),
        ("mapping.schema.json", ficus_mapping::mapping_file_schema()),
    ] {
        assert!(
            committed(name) == generated,
            "docs/schemas/{name} is stale\\nhint: cargo run -p ficus-cli -- schemas --out docs/schemas"
        );
    }
}

#[test]
fn every_example_validates_and_mistakes_do_not() {
    let config = jsonschema::validator_for(&config_schema()).unwrap();
    let mapping = jsonschema::validator_for(&ficus_mapping::mapping_file_schema()).unwrap();
    let mut seen = (0, 0);
    for path in glob::glob(&format!("{ROOT}/examples/*/ficus.toml")).unwrap() {
        let path = path.unwrap();
        let doc = toml_as_json(&std::fs::read_to_string(&path).unwrap());
        let errors: Vec<String> = config.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        seen.0 += 1;
    }
    for path in glob::glob(&format!("{ROOT}/examples/*/mappings/*.toml")).unwrap() {
        let path = path.unwrap();
        let doc = toml_as_json(&std::fs::read_to_string(&path).unwrap());
        let errors: Vec<String> = mapping.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        seen.1 += 1;
    }
    assert!(seen.0 >= 6 && seen.1 >= 2, "{seen:?}");

    let wrong_configs = [
        "[source]\nslott = \"x\"\n",
        "[source]\n\n[[sink]]\ntype = \"kafka\"\nbrokers = \"b:9092\"\ntopik = \"t\"\n",
        "[source]\n\n[[sink]]\ntype = \"kafka\"\n",
        "[source]\n\n[[sink]]\ntype = \"nats\"\nmode = \"binery\"\n",
        "[source]\n\n[[sink]]\ntype = \"carrier-pigeon\"\n",
        "[[sink]]\ntype = \"stdout\"\n",
    ];
    for text in wrong_configs {
        assert!(!config.is_valid(&toml_as_json(text)), "{text}");
    }
    let right = "[source]\nurl = \"postgres://db/shop\"\n\n[[sink]]\nname = \"k\"\ntype = \"kafka\"\nbrokers = \"b:9092\"\nevents = [\"Order*\"]\n";
    assert!(config.is_valid(&toml_as_json(right)));

    let wrong_mappings = [
        "[[event]]\nname = \"A\"\ntable = \"t\"\non = [\"upsert\"]\nkey = \"new.id\"\n",
        "[[event]]\nname = \"A\"\ntable = \"t\"\non = [\"insert\"]\nkey = \"new.id\"\nwhenn = \"true\"\n",
        "[[event]]\nname = \"A\"\ntable = \"t\"\non = [\"insert\"]\n",
        "[[event]]\nname = \"A\"\ntable = \"t\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = \"row\"\n",
        "[[event]]\nname = \"A\"\ntable = \"t\"\non = [\"insert\"]\nkey = \"new.id\"\nversion = 0\n",
        "[[events]]\nname = \"A\"\n",
    ];
    for text in wrong_mappings {
        assert!(!mapping.is_valid(&toml_as_json(text)), "{text}");
    }
}
