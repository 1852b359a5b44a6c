//! The resource table: every live resource by id, and the budgets the guest's host
//! allocations are charged against ([`Budget`]).
//!
//! Commands reach resources only through this table: a new resource is [`reserved`] (its id
//! checked, one resource charged), its host memory is charged with [`charge_bytes`] before it
//! is allocated, and the [`Charge`]s travel into the resource, so that [`remove`] (or
//! [`clear`] at reset) gives everything back. Contexts charge against the same [`budget`].
//!
//! [`reserved`]: ResourceTable::reserve
//! [`charge_bytes`]: ResourceTable::charge_bytes
//! [`remove`]: ResourceTable::remove
//! [`clear`]: ResourceTable::clear
//! [`budget`]: ResourceTable::budget

use std::collections::BTreeMap;

use super::budget::{Budget, Charge, Kind, Usage};
use super::reject::{over_budget, reject, Reject};
use super::resource::Resource;
use crate::protocol::GpuError;

/// Live resources and the budgets they are charged against.
#[derive(Debug)]
pub(crate) struct ResourceTable {
    /// Boxed: a B-tree keeps its values inline in half-filled nodes, so a large value costs
    /// about twice its size per entry; a box costs one pointer there.
    resources: BTreeMap<u32, Box<Resource>>,
    budget: Budget,
}

impl ResourceTable {
    /// An empty table charging against `budget`.
    pub fn new(budget: Budget) -> Self {
        ResourceTable {
            resources: BTreeMap::new(),
            budget,
        }
    }

    /// The budgets (contexts charge against them too).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// What is charged now, of every kind.
    pub fn used(&self) -> Usage {
        self.budget.used()
    }

    /// Checks a new resource id (not 0, not in use) and charges one resource; the charge
    /// belongs in the resource that gets the id.
    pub fn reserve(&self, resource_id: u32) -> Result<Charge, Reject> {
        if resource_id == 0 {
            return Err(reject(
                GpuError::InvalidResourceId,
                "resource_id 0 is invalid",
            ));
        }
        if self.resources.contains_key(&resource_id) {
            return Err(reject(
                GpuError::InvalidResourceId,
                format!("resource_id {resource_id} already exists"),
            ));
        }
        self.budget
            .charge(Usage::of(Kind::Resources, 1))
            .map_err(|e| over_budget(&format!("resource_id {resource_id}"), e))
    }

    /// Charges `bytes` of host memory for `what` (named in the refusal).
    pub fn charge_bytes(&self, bytes: u64, what: &str) -> Result<Charge, Reject> {
        self.budget
            .charge(Usage::host_bytes(bytes))
            .map_err(|e| over_budget(what, e))
    }

    /// Charges `amount` (any kinds) for `what`.
    pub fn charge(&self, amount: Usage, what: &str) -> Result<Charge, Reject> {
        self.budget.charge(amount).map_err(|e| over_budget(what, e))
    }

    /// Checks that `amount` more would fit, without charging it.
    pub fn check(&self, amount: Usage, what: &str) -> Result<(), Reject> {
        self.budget.check(amount).map_err(|e| over_budget(what, e))
    }

    /// Adds a resource under an id [`reserve`](Self::reserve)d for it.
    pub fn insert(&mut self, resource_id: u32, resource: Resource) {
        let old = self.resources.insert(resource_id, Box::new(resource));
        debug_assert!(old.is_none(), "resource_id {resource_id} inserted twice");
    }

    /// Whether `resource_id` exists.
    pub fn contains(&self, resource_id: u32) -> bool {
        self.resources.contains_key(&resource_id)
    }

    /// The resource, or `ERR_INVALID_RESOURCE_ID`.
    pub fn get(&self, resource_id: u32) -> Result<&Resource, Reject> {
        self.resources
            .get(&resource_id)
            .map(|r| &**r)
            .ok_or_else(|| missing(resource_id))
    }

    /// The resource, or `ERR_INVALID_RESOURCE_ID`.
    pub fn get_mut(&mut self, resource_id: u32) -> Result<&mut Resource, Reject> {
        self.resources
            .get_mut(&resource_id)
            .map(|r| &mut **r)
            .ok_or_else(|| missing(resource_id))
    }

    /// Takes a resource out of the table; dropping it releases its charges.
    pub fn remove(&mut self, resource_id: u32) -> Option<Resource> {
        self.resources.remove(&resource_id).map(|r| *r)
    }

    /// Every resource with its id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Resource)> {
        self.resources.iter().map(|(&id, r)| (id, &**r))
    }

    /// Number of live resources.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Drops every resource (device reset).
    pub fn clear(&mut self) {
        self.resources.clear();
    }
}

fn missing(resource_id: u32) -> Reject {
    reject(
        GpuError::InvalidResourceId,
        format!("resource_id {resource_id} does not exist"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::resource::ResourceKind;

    fn table() -> ResourceTable {
        ResourceTable::new(Budget::new(
            Usage::host_bytes(1000).with(Kind::Resources, 2),
        ))
    }

    fn resource(table: &ResourceTable, id: u32, bytes: u64) -> Result<Resource, Reject> {
        let mut charge = table.reserve(id)?;
        charge.absorb(table.charge_bytes(bytes, "test")?);
        Ok(Resource::new(ResourceKind::empty_2d(), bytes, 0, charge))
    }

    #[test]
    fn ids_and_counts_are_checked_and_released() {
        let mut t = table();
        assert_eq!(t.reserve(0).unwrap_err().error, GpuError::InvalidResourceId);
        let r = resource(&t, 1, 600).unwrap();
        t.insert(1, r);
        assert_eq!(t.reserve(1).unwrap_err().error, GpuError::InvalidResourceId);
        // Bytes past the limit: refused, nothing charged.
        assert_eq!(
            resource(&t, 2, 401).unwrap_err().error,
            GpuError::OutOfMemory
        );
        assert_eq!(t.used(), Usage::host_bytes(600).with(Kind::Resources, 1));
        let r = resource(&t, 2, 400).unwrap();
        t.insert(2, r);
        // Count past the limit.
        assert_eq!(t.reserve(3).unwrap_err().error, GpuError::OutOfMemory);
        drop(t.remove(1));
        assert_eq!(t.used(), Usage::host_bytes(400).with(Kind::Resources, 1));
        t.clear();
        assert!(t.used().is_zero());
        assert_eq!(t.get(2).unwrap_err().error, GpuError::InvalidResourceId);
    }
}
