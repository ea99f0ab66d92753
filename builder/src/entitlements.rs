//! Entitlements: a graph that asks for a privilege the caller did not grant is refused
//! before anything runs, naming the step.

use crate::{BuildError, Entitlement};
use rdock_llb::{Definition, Network, Op, Security};

/// Refuses `def` if a step needs an entitlement not in `allow`.
pub(crate) fn check(def: &Definition, allow: &[Entitlement]) -> Result<(), BuildError> {
    for node in &def.nodes {
        let Op::Exec(e) = &node.op else { continue };
        let needs = [
            (e.network == Network::Host, Entitlement::NetworkHost, "--network=host"),
            (e.security == Security::Insecure, Entitlement::SecurityInsecure, "--security=insecure"),
        ];
        for (asked, entitlement, flag) in needs {
            if asked && !allow.contains(&entitlement) {
                let step = def.metadata.get(&node.digest()).map(|m| m.description.clone()).unwrap_or_default();
                return Err(BuildError::NotEntitled { step, flag, entitlement });
            }
        }
    }
    Ok(())
}
