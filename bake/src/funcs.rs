//! The functions of buildx's HCL standard library that bake files use most, declared
//! for `hcl-rs`'s evaluator. A function outside this set is an evaluation error that
//! names it.

use hcl::Value;
use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};

fn string(args: &FuncArgs, i: usize) -> Result<String, String> {
    args.get(i).and_then(|v| v.as_str().map(str::to_string)).ok_or_else(|| format!("argument {i} must be a string"))
}

fn upper(args: FuncArgs) -> Result<Value, String> {
    Ok(string(&args, 0)?.to_uppercase().into())
}

fn lower(args: FuncArgs) -> Result<Value, String> {
    Ok(string(&args, 0)?.to_lowercase().into())
}

fn join(args: FuncArgs) -> Result<Value, String> {
    let sep = string(&args, 0)?;
    let list = args.get(1).and_then(|v| v.as_array()).ok_or("argument 1 must be a list")?;
    let parts: Vec<String> = list.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
    Ok(parts.join(&sep).into())
}

fn split(args: FuncArgs) -> Result<Value, String> {
    let sep = string(&args, 0)?;
    Ok(Value::Array(string(&args, 1)?.split(sep.as_str()).map(|s| Value::from(s.to_string())).collect()))
}

fn equal(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::Bool(args.first() == args.get(1)))
}

fn notequal(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::Bool(args.first() != args.get(1)))
}

fn trimprefix(args: FuncArgs) -> Result<Value, String> {
    let s = string(&args, 0)?;
    let p = string(&args, 1)?;
    Ok(s.strip_prefix(p.as_str()).unwrap_or(&s).to_string().into())
}

fn trimsuffix(args: FuncArgs) -> Result<Value, String> {
    let s = string(&args, 0)?;
    let p = string(&args, 1)?;
    Ok(s.strip_suffix(p.as_str()).unwrap_or(&s).to_string().into())
}

fn replace(args: FuncArgs) -> Result<Value, String> {
    Ok(string(&args, 0)?.replace(string(&args, 1)?.as_str(), &string(&args, 2)?).into())
}

/// Declares the functions in `ctx`.
pub(crate) fn declare(ctx: &mut Context<'_>) {
    use ParamType::{Any, String as S};
    ctx.declare_func("upper", FuncDef::new(upper, [S]));
    ctx.declare_func("lower", FuncDef::new(lower, [S]));
    ctx.declare_func("join", FuncDef::new(join, [S, Any]));
    ctx.declare_func("split", FuncDef::new(split, [S, S]));
    ctx.declare_func("equal", FuncDef::new(equal, [Any, Any]));
    ctx.declare_func("notequal", FuncDef::new(notequal, [Any, Any]));
    ctx.declare_func("trimprefix", FuncDef::new(trimprefix, [S, S]));
    ctx.declare_func("trimsuffix", FuncDef::new(trimsuffix, [S, S]));
    ctx.declare_func("replace", FuncDef::new(replace, [S, S, S]));
}
