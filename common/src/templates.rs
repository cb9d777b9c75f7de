//! Templates in policy values (`{{ hostname }}`, `{{ traits.os }}`, `{{ vars.port }}`),
//! rendered by the envoy with its own facts. The hub and spokes check only the syntax,
//! at publish time, so a broken template never reaches a machine.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value, context};

/// Checks that `source` parses as a template.
pub fn check_syntax(source: &str) -> Result<(), String> {
    environment()
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A name the envoy does not know is an error, never an empty string in a config file.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

/// Renders templates with one machine's facts.
pub struct Renderer {
    env: Environment<'static>,
    context: Value,
}

impl Renderer {
    pub fn new(
        hostname: &str,
        traits: &BTreeMap<String, String>,
        vars: &BTreeMap<String, String>,
    ) -> Self {
        Self {
            env: environment(),
            context: context! { hostname => hostname, traits => traits, vars => vars },
        }
    }

    pub fn render(&self, source: &str) -> Result<String, String> {
        if !source.contains("{{") && !source.contains("{%") {
            return Ok(source.to_string());
        }
        self.env
            .render_str(source, &self.context)
            .map_err(|e| format!("template: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_facts_and_refuses_unknown_names() {
        let traits = BTreeMap::from([("os".to_string(), "debian".to_string())]);
        let vars = BTreeMap::from([("port".to_string(), "8080".to_string())]);
        let r = Renderer::new("web-1", &traits, &vars);
        assert_eq!(
            r.render("{{ hostname }} {{ traits.os }}:{{ vars.port }}\n")
                .unwrap(),
            "web-1 debian:8080\n"
        );
        assert!(r.render("{{ vars.nope }}").is_err());
        assert!(check_syntax("{{ unclosed").is_err());
        assert!(check_syntax("{% if traits.os == 'debian' %}x{% endif %}").is_ok());
    }
}
