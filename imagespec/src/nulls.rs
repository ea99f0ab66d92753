//! Go's encoder writes a nil slice or map as `null` (`"OnBuild": null`, `"Env": null`,
//! `"Volumes": null`), and every image docker's classic builder, `docker commit` and
//! `docker import` make has some. Fields that default when absent take `null` as absent.

use serde::{Deserialize, Deserializer};

/// Deserializes `T`, or its default for `null`.
pub(crate) fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
