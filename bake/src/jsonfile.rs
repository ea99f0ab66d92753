//! `docker-bake.json`: the HCL file's blocks as JSON objects (`variable`, `group`,
//! `target`), every string interpolated with the variables as HCL's templates are.

use crate::hclfile::Variables;
use crate::{BakeError, BakeFile, Definition, target_from};
use hcl::eval::{Context, Evaluate};
use hcl::expr::TemplateExpr;
use serde_json::Value;

fn parse(f: &BakeFile) -> Result<serde_json::Map<String, Value>, BakeError> {
    let invalid = |message: String| BakeError::Invalid { file: f.path.display().to_string(), message };
    let doc: Value = serde_json::from_str(&f.text).map_err(|e| invalid(e.to_string()))?;
    let Value::Object(top) = doc else { return Err(invalid("expected an object".into())) };
    if let Some(k) = top.keys().find(|k| !["variable", "group", "target"].contains(&k.as_str())) {
        return Err(invalid(format!("{k:?} is not supported (variable, group and target are)")));
    }
    Ok(top)
}

fn section<'a>(top: &'a serde_json::Map<String, Value>, key: &str) -> impl Iterator<Item = (&'a String, &'a Value)> {
    top.get(key).and_then(Value::as_object).into_iter().flat_map(|m| m.iter())
}

/// A JSON value as an HCL expression, strings as templates.
fn expression(v: &Value) -> hcl::Expression {
    match v {
        Value::String(s) => hcl::Expression::from(TemplateExpr::from(s.as_str())),
        other => hcl::to_expression(other).unwrap_or(hcl::Expression::Null),
    }
}

/// Collects the file's variables.
pub(crate) fn declare(f: &BakeFile, vars: &mut Variables) -> Result<(), BakeError> {
    let top = parse(f)?;
    for (name, v) in section(&top, "variable") {
        vars.declare(&f.path.display().to_string(), name, v.get("default").map(expression));
    }
    Ok(())
}

/// Every string in `v` interpolated in `ctx`.
fn interpolate(v: &Value, ctx: &Context<'_>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let out = TemplateExpr::from(s.as_str()).evaluate(ctx).map_err(|e| e.to_string())?;
            serde_json::to_value(&out).map_err(|e| e.to_string())?
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| interpolate(x, ctx)).collect::<Result<_, _>>()?),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| Ok((k.clone(), interpolate(x, ctx)?))).collect::<Result<_, String>>()?),
        other => other.clone(),
    })
}

/// Reads the file's groups and targets into `def`.
pub(crate) fn read(f: &BakeFile, ctx: &Context<'_>, def: &mut Definition) -> Result<(), BakeError> {
    let file = f.path.display().to_string();
    let top = parse(f)?;
    for (name, g) in section(&top, "group") {
        let targets = g.get("targets").and_then(Value::as_array).map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect());
        def.groups.insert(name.clone(), targets.unwrap_or_default());
    }
    for (name, t) in section(&top, "target") {
        let fail = |message: String| BakeError::Eval { file: file.clone(), what: format!("target {name:?}"), message };
        let Value::Object(obj) = interpolate(t, ctx).map_err(fail)? else {
            return Err(BakeError::Invalid { file: file.clone(), message: format!("target {name:?} is not an object") });
        };
        def.add_target(name.clone(), target_from(&file, name, obj)?);
    }
    Ok(())
}
