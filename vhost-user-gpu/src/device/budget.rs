//! What a guest may make the host hold: budgets of several kinds (host bytes, resources,
//! contexts, pending fences, open files, context attachments), charged before an allocation is
//! made and released when it goes.
//!
//! A [`Charge`] is the receipt of one successful [`Budget::charge`]: it travels with the
//! allocation it pays for (a resource's pixels, a backing's entry list, a buffer waiting in a
//! context, the context itself, a shown scanout's copies) and gives its amount back when
//! dropped. Nothing has to remember to uncharge: dropping a resource, a context or a
//! half-built allocation on an error path releases exactly what it was charged, and a device
//! reset that drops every resource, context and scanout brings every budget back to zero.
//! A receipt for something that grows and shrinks (a context's attachments, a scanout's
//! copies) is resized with [`Charge::grow`] and [`Charge::shrink`].
//!
//! Amounts are added with checked arithmetic: a request whose total would overflow is
//! refused like one past the limit.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Host memory in bytes: 2D pixels, host buffers (HOST3D blobs and buffers allocated for
    /// cross-domain image requirements), the kernel's page arrays behind dma-bufs, the
    /// guest-memory entry lists of backings, and the copies a shown scanout costs (the
    /// device's and the display sinks').
    HostBytes,
    /// Live resources.
    Resources,
    /// Live contexts.
    Contexts,
    /// Fenced answers waiting for their fence (`device::fence`).
    PendingFences,
    /// Open file descriptors held for the guest: host buffers (each a memfd or a dma-buf),
    /// dma-bufs exported over guest pages, and cross-domain channels' compositor
    /// connections, pipes, and fds received from the compositor and not yet claimed.
    Fds,
    /// Resources attached to contexts (each (context, resource) pair counts once).
    Attachments,
}

impl Kind {
    /// Every kind, in [`Usage`] order.
    pub const ALL: [Kind; 6] = [
        Kind::HostBytes,
        Kind::Resources,
        Kind::Contexts,
        Kind::PendingFences,
        Kind::Fds,
        Kind::Attachments,
    ];

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::HostBytes => "host bytes",
            Kind::Resources => "resources",
            Kind::Contexts => "contexts",
            Kind::PendingFences => "pending fences",
            Kind::Fds => "open files",
            Kind::Attachments => "context attachments",
        })
    }
}

/// An amount of each [`Kind`] (used, a limit, or what one charge holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage([u64; Kind::ALL.len()]);

impl Usage {
    /// Nothing of any kind.
    pub const ZERO: Usage = Usage([0; Kind::ALL.len()]);

    /// `amount` of `kind`, nothing of the others.
    pub const fn of(kind: Kind, amount: u64) -> Usage {
        let mut usage = Usage::ZERO;
        usage.0[kind.index()] = amount;
        usage
    }

    /// `bytes` of host memory.
    pub const fn host_bytes(bytes: u64) -> Usage {
        Usage::of(Kind::HostBytes, bytes)
    }

    /// This amount with `kind` set to `amount`.
    pub const fn with(mut self, kind: Kind, amount: u64) -> Usage {
        self.0[kind.index()] = amount;
        self
    }

    /// The amount of `kind`.
    pub const fn get(&self, kind: Kind) -> u64 {
        self.0[kind.index()]
    }

    /// The sum, `None` when any kind overflows.
    pub fn checked_add(self, other: Usage) -> Option<Usage> {
        let mut sum = Usage::ZERO;
        for kind in Kind::ALL {
            sum.0[kind.index()] = self.get(kind).checked_add(other.get(kind))?;
        }
        Some(sum)
    }

    /// The sum, each kind capped at `u64::MAX`.
    pub fn saturating_add(self, other: Usage) -> Usage {
        let mut sum = Usage::ZERO;
        for kind in Kind::ALL {
            sum.0[kind.index()] = self.get(kind).saturating_add(other.get(kind));
        }
        sum
    }

    /// The difference, each kind floored at zero.
    pub fn saturating_sub(self, other: Usage) -> Usage {
        let mut diff = Usage::ZERO;
        for kind in Kind::ALL {
            diff.0[kind.index()] = self.get(kind).saturating_sub(other.get(kind));
        }
        diff
    }

    /// Whether every kind is zero.
    pub fn is_zero(&self) -> bool {
        *self == Usage::ZERO
    }
}

/// A charge that would not fit: the first kind past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// The kind past its limit.
    pub kind: Kind,
    /// The amount of it asked for.
    pub wanted: u64,
    /// The amount in use before the charge.
    pub used: u64,
    /// The limit.
    pub limit: u64,
}

#[derive(Debug)]
struct State {
    limits: Usage,
    used: Mutex<Usage>,
}

impl State {
    fn used(&self) -> MutexGuard<'_, Usage> {
        // A panic while the lock is held cannot leave `Usage` half-updated (it is replaced
        // whole), so a poisoned lock still holds a consistent value.
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The budgets of one device: limits, what is in use, and the charges against them. A
/// clone is the same budget (port implementations that hold fds for the guest charge it).
#[derive(Debug, Clone)]
pub struct Budget {
    state: Arc<State>,
}

impl Budget {
    /// Budgets with `limits`, nothing in use.
    pub fn new(limits: Usage) -> Budget {
        Budget {
            state: Arc::new(State {
                limits,
                used: Mutex::new(Usage::ZERO),
            }),
        }
    }

    /// Another handle on the same budgets (charges through either count against both).
    pub fn clone_handle(&self) -> Budget {
        Budget {
            state: Arc::clone(&self.state),
        }
    }

    /// The limits.
    pub fn limits(&self) -> Usage {
        self.state.limits
    }

    /// What all live charges hold together.
    pub fn used(&self) -> Usage {
        *self.state.used()
    }

    /// Charges `amount` if every kind stays within its limit; the returned [`Charge`]
    /// releases it when dropped.
    pub fn charge(&self, amount: Usage) -> Result<Charge, Exceeded> {
        let mut used = self.state.used();
        *used = self.fit(*used, amount)?;
        Ok(Charge {
            amount,
            state: Arc::clone(&self.state),
        })
    }

    /// Whether `amount` more would fit now, without charging it.
    pub fn check(&self, amount: Usage) -> Result<(), Exceeded> {
        self.fit(*self.state.used(), amount).map(drop)
    }

    /// A charge of nothing, to [`Charge::absorb`] others into.
    pub fn nothing(&self) -> Charge {
        Charge {
            amount: Usage::ZERO,
            state: Arc::clone(&self.state),
        }
    }

    /// `used + amount`, or the first kind that would pass its limit (or overflow).
    fn fit(&self, used: Usage, amount: Usage) -> Result<Usage, Exceeded> {
        let limits = self.state.limits;
        let mut total = Usage::ZERO;
        for kind in Kind::ALL {
            match used.get(kind).checked_add(amount.get(kind)) {
                Some(sum) if sum <= limits.get(kind) => total.0[kind.index()] = sum,
                _ => {
                    return Err(Exceeded {
                        kind,
                        wanted: amount.get(kind),
                        used: used.get(kind),
                        limit: limits.get(kind),
                    })
                }
            }
        }
        Ok(total)
    }
}

/// The receipt of a charge: keeps its amount in use until dropped.
#[must_use = "a charge is released when dropped: keep it with what it pays for"]
pub struct Charge {
    amount: Usage,
    state: Arc<State>,
}

impl Charge {
    /// What this charge holds.
    pub fn amount(&self) -> Usage {
        self.amount
    }

    /// Charges `more` against the same budget and adds it to this receipt; on failure
    /// nothing changes.
    pub fn grow(&mut self, more: Usage) -> Result<(), Exceeded> {
        if more.is_zero() {
            return Ok(());
        }
        let budget = Budget {
            state: Arc::clone(&self.state),
        };
        let extra = budget.charge(more)?;
        self.absorb(extra);
        Ok(())
    }

    /// Releases `less` of this receipt (each kind at most what it holds).
    pub fn shrink(&mut self, less: Usage) {
        let mut released = Usage::ZERO;
        for kind in Kind::ALL {
            released.0[kind.index()] = less.get(kind).min(self.amount.get(kind));
        }
        if released.is_zero() {
            return;
        }
        self.amount = self.amount.saturating_sub(released);
        let mut used = self.state.used();
        *used = used.saturating_sub(released);
    }

    /// Grows or shrinks this receipt, kind by kind, to hold exactly `amount`; on failure
    /// nothing changes.
    pub fn resize(&mut self, amount: Usage) -> Result<(), Exceeded> {
        self.grow(amount.saturating_sub(self.amount))?;
        self.shrink(self.amount.saturating_sub(amount));
        Ok(())
    }

    /// Takes over `other` (charged against the same budget): one receipt for both.
    pub fn absorb(&mut self, mut other: Charge) {
        debug_assert!(
            Arc::ptr_eq(&self.state, &other.state),
            "charges of two budgets"
        );
        // Both amounts are part of the budget's `used`, their checked sum or more, so the
        // sum fits; `other` is left empty and releases nothing when dropped.
        self.amount = self
            .amount
            .saturating_add(std::mem::take(&mut other.amount));
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Charge").field(&self.amount).finish()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.amount.is_zero() {
            return;
        }
        let mut used = self.state.used();
        *used = used.saturating_sub(self.amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Usage {
        Usage::host_bytes(100)
            .with(Kind::Resources, 2)
            .with(Kind::Contexts, 1)
            .with(Kind::Fds, 1)
            .with(Kind::Attachments, 1)
    }

    #[test]
    fn charges_are_released_when_dropped() {
        let budget = Budget::new(limits());
        let a = budget.charge(Usage::host_bytes(60)).unwrap();
        let b = budget.charge(Usage::of(Kind::Resources, 1)).unwrap();
        assert_eq!(budget.used().get(Kind::HostBytes), 60);
        assert_eq!(budget.used().get(Kind::Resources), 1);
        drop(a);
        assert_eq!(budget.used().get(Kind::HostBytes), 0);
        drop(b);
        assert!(budget.used().is_zero());
    }

    #[test]
    fn a_charge_past_any_limit_is_refused_and_changes_nothing() {
        let budget = Budget::new(limits());
        let _held = budget.charge(Usage::host_bytes(60)).unwrap();
        let both = Usage::host_bytes(41).with(Kind::Resources, 1);
        assert_eq!(
            budget.charge(both).err(),
            Some(Exceeded {
                kind: Kind::HostBytes,
                wanted: 41,
                used: 60,
                limit: 100
            })
        );
        assert_eq!(budget.used(), Usage::host_bytes(60));
        assert!(budget.check(Usage::host_bytes(40)).is_ok());
        assert!(budget.check(Usage::of(Kind::Contexts, 2)).is_err());
    }

    #[test]
    fn overflowing_amounts_are_refused() {
        let budget = Budget::new(Usage::host_bytes(u64::MAX));
        let _held = budget.charge(Usage::host_bytes(u64::MAX - 1)).unwrap();
        let err = budget.charge(Usage::host_bytes(2)).unwrap_err();
        assert_eq!(err.kind, Kind::HostBytes);
        assert_eq!(budget.used(), Usage::host_bytes(u64::MAX - 1));
    }

    #[test]
    fn receipts_grow_shrink_and_resize_within_the_limits() {
        let budget = Budget::new(limits());
        let mut c = budget.nothing();
        c.grow(Usage::host_bytes(70)).unwrap();
        assert_eq!(
            c.grow(Usage::host_bytes(31)).unwrap_err().kind,
            Kind::HostBytes,
            "one byte past the limit"
        );
        assert_eq!(
            c.amount(),
            Usage::host_bytes(70),
            "a refused grow changes nothing"
        );
        c.grow(Usage::host_bytes(30)).unwrap();
        assert_eq!(
            budget.used(),
            Usage::host_bytes(100),
            "exactly at the limit"
        );
        c.shrink(Usage::host_bytes(40).with(Kind::Contexts, 5));
        assert_eq!(
            c.amount(),
            Usage::host_bytes(60),
            "a shrink releases at most what it holds"
        );
        c.resize(
            Usage::host_bytes(10)
                .with(Kind::Attachments, 0)
                .with(Kind::Fds, 0),
        )
        .unwrap();
        assert_eq!(budget.used(), Usage::host_bytes(10));
        assert!(c
            .resize(Usage::host_bytes(10).with(Kind::Contexts, 2))
            .is_err());
        assert_eq!(budget.used(), Usage::host_bytes(10));
        drop(c);
        assert!(budget.used().is_zero());
    }

    #[test]
    fn absorbed_charges_are_released_together() {
        let budget = Budget::new(limits());
        let mut total = budget.nothing();
        total.absorb(budget.charge(Usage::host_bytes(10)).unwrap());
        total.absorb(budget.charge(Usage::host_bytes(20)).unwrap());
        assert_eq!(total.amount(), Usage::host_bytes(30));
        assert_eq!(budget.used(), Usage::host_bytes(30));
        drop(total);
        assert!(budget.used().is_zero());
    }
}
