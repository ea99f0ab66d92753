//! `docker-bake.hcl`: `variable`, `group` and `target` blocks, expressions evaluated by
//! `hcl-rs` with the variables (an environment variable of the same name overrides a
//! default, as in buildx) and a few of buildx's functions.

use crate::{BakeError, BakeFile, Definition, target_from};
use hcl::eval::{Context, Evaluate};
use hcl::{Body, Expression, Value};

/// Variables declared in any file, evaluated together (a default may use another).
#[derive(Default)]
pub(crate) struct Variables {
    /// (file, name, default).
    declared: Vec<(String, String, Option<Expression>)>,
}

impl Variables {
    /// Declares `name`, defaulting to `default`; a later declaration replaces an earlier.
    pub(crate) fn declare(&mut self, file: &str, name: &str, default: Option<Expression>) {
        self.declared.retain(|(_, n, _)| n != name);
        self.declared.push((file.to_string(), name.to_string(), default));
    }

    /// A context with every variable's value and the functions: defaults are evaluated
    /// until none is left whose variables are all known.
    pub(crate) fn evaluate(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Context<'static>, BakeError> {
        let mut ctx = Context::new();
        crate::funcs::declare(&mut ctx);
        let mut left: Vec<&(String, String, Option<Expression>)> = self.declared.iter().collect();
        while !left.is_empty() {
            let mut failed = Vec::new();
            let mut progress = false;
            for v in left {
                match value_of(v, env, &ctx) {
                    Ok(value) => {
                        ctx.declare_var(v.1.clone(), value);
                        progress = true;
                    }
                    Err(e) => failed.push((v, e)),
                }
            }
            if !progress {
                let ((file, name, _), e) = &failed[0];
                return Err(BakeError::Eval { file: file.clone(), what: format!("variable {name:?}"), message: e.clone() });
            }
            left = failed.into_iter().map(|(v, _)| v).collect();
        }
        Ok(ctx)
    }
}

/// A variable's value: the environment's (typed as the default is), else its default.
fn value_of(v: &(String, String, Option<Expression>), env: &dyn Fn(&str) -> Option<String>, ctx: &Context<'_>) -> Result<Value, String> {
    let default = match &v.2 {
        Some(e) => e.evaluate(ctx).map_err(|e| e.to_string())?,
        None => Value::String(String::new()),
    };
    let Some(text) = env(&v.1) else { return Ok(default) };
    Ok(match default {
        Value::Bool(_) => Value::Bool(matches!(text.as_str(), "1" | "true" | "TRUE" | "True")),
        Value::Number(_) => {
            text.parse::<i64>().map(Value::from).or_else(|_| text.parse::<f64>().map(Value::from)).unwrap_or(Value::String(text))
        }
        _ => Value::String(text),
    })
}

fn parse(f: &BakeFile) -> Result<Body, BakeError> {
    hcl::parse(&f.text).map_err(|source| BakeError::Hcl { file: f.path.display().to_string(), source })
}

fn label(f: &BakeFile, b: &hcl::Block) -> Result<String, BakeError> {
    match b.labels() {
        [one] => Ok(one.as_str().to_string()),
        _ => Err(BakeError::Invalid { file: f.path.display().to_string(), message: format!("a {} block takes one name", b.identifier()) }),
    }
}

/// Collects the file's `variable` blocks.
pub(crate) fn declare(f: &BakeFile, vars: &mut Variables) -> Result<(), BakeError> {
    let body = parse(f)?;
    for b in body.blocks().filter(|b| b.identifier() == "variable") {
        let name = label(f, b)?;
        let default = b.body().attributes().find(|a| a.key() == "default").map(|a| a.expr().clone());
        vars.declare(&f.path.display().to_string(), &name, default);
    }
    Ok(())
}

/// Reads the file's groups and targets into `def`, evaluated in `ctx`.
pub(crate) fn read(f: &BakeFile, ctx: &Context<'_>, def: &mut Definition) -> Result<(), BakeError> {
    let file = f.path.display().to_string();
    let body = parse(f)?;
    if let Some(a) = body.attributes().next() {
        return Err(BakeError::Invalid { file, message: format!("{} = …: attributes belong in a target block", a.key()) });
    }
    for b in body.blocks() {
        match b.identifier() {
            "variable" => {}
            "group" => {
                let name = label(f, b)?;
                let obj = attributes(&file, &format!("group {name:?}"), b.body(), ctx)?;
                let targets = match obj.get("targets") {
                    Some(serde_json::Value::Array(v)) => v.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
                    _ => Vec::new(),
                };
                def.groups.insert(name, targets);
            }
            "target" => {
                let name = label(f, b)?;
                let obj = attributes(&file, &format!("target {name:?}"), b.body(), ctx)?;
                def.add_target(name.clone(), target_from(&file, &name, obj)?);
            }
            other => {
                return Err(BakeError::Invalid {
                    file,
                    message: format!("{other} blocks are not supported (variable, group and target are)"),
                });
            }
        }
    }
    Ok(())
}

/// A block's attributes, each evaluated, as JSON.
fn attributes(file: &str, what: &str, body: &Body, ctx: &Context<'_>) -> Result<serde_json::Map<String, serde_json::Value>, BakeError> {
    if let Some(b) = body.blocks().next() {
        return Err(BakeError::Invalid {
            file: file.to_string(),
            message: format!("{what}: nested {} blocks are not supported", b.identifier()),
        });
    }
    let mut obj = serde_json::Map::new();
    for a in body.attributes() {
        let fail = |message: String| BakeError::Eval { file: file.to_string(), what: format!("{what}.{}", a.key()), message };
        let v = a.expr().evaluate(ctx).map_err(|e| fail(e.to_string()))?;
        obj.insert(a.key().to_string(), serde_json::to_value(&v).map_err(|e| fail(e.to_string()))?);
    }
    Ok(obj)
}
