//! Emergency switches every worker reads on every request (one shared-data get): those set
//! through the local control endpoint, and those pushed by `switches` instances (the Istio
//! emergency manifests), each under its own name with a lease it renews every tick. A pushed
//! set whose instance is gone lapses when its lease ends, so deleting a manifest is the undo.
//!
//! A `switches` instance renews its lease from the requests it sees (at most twice per
//! lease), not from a timer: Envoy keeps a replaced listener's filters alive while its
//! connections drain (Istio: 45 s), and a timer in a removed instance would keep renewing all
//! that time, while requests only flow through the current filter chain. Of two copies of
//! one instance (a draining one and its replacement), the one configured last wins.

use super::codec::{DecodeError, Reader, Writer};
use super::record::{load, update, Record, RecordError};
use super::store::SharedStore;
use crate::config::Millis;
use crate::control::{apply, Change, ControlError, ControlRequest};
use crate::core::emergency::{merge, Switches};
use crate::core::time::Instant;

pub const KEY: &str = "reflex.v2.switches";
/// At most this many `switches` instances publish at once (extra ones are ignored).
pub const MAX_PUSHERS: usize = 8;
/// Copies of one instance configured within this of each other belong to the same
/// configuration (one per worker); a copy configured earlier still is a draining one.
pub const SAME_CONFIGURATION: Millis = Millis(2_000);
/// Switches published by one `switches` instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pushed {
    pub name: String,
    pub switches: Switches,
    /// The lease: after this the set no longer applies.
    pub until: Instant,
    /// When the publishing instance was configured.
    pub configured_at: Instant,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwitchBoard {
    /// Set through the control endpoint of this pod.
    pub local: Switches,
    pub pushed: Vec<Pushed>,
}

impl Record for SwitchBoard {
    fn write(&self, w: &mut Writer) {
        self.local.write(w);
        w.u8(self.pushed.len().min(MAX_PUSHERS) as u8);
        for p in self.pushed.iter().take(MAX_PUSHERS) {
            w.str(&p.name);
            p.switches.write(w);
            w.u64(p.until.0);
            w.u64(p.configured_at.0);
        }
    }
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let local = Switches::read(r)?;
        let count = usize::from(r.u8()?);
        if count > MAX_PUSHERS {
            return Err(DecodeError::TooLong);
        }
        let pushed = (0..count)
            .map(|_| {
                Ok(Pushed {
                    name: r.str()?,
                    switches: Switches::read(r)?,
                    until: Instant(r.u64()?),
                    configured_at: Instant(r.u64()?),
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(SwitchBoard { local, pushed })
    }
}

impl SwitchBoard {
    /// The pushed sets whose lease still runs, merged.
    pub fn pushed_at(&self, now: Instant) -> Switches {
        self.pushed
            .iter()
            .filter(|p| p.until > now)
            .fold(Switches::default(), |acc, p| merge(&acc, &p.switches, now))
    }

    /// What applies now: the filter's own config, the pushed sets and the local switches.
    pub fn effective(&self, own: &Switches, now: Instant) -> Switches {
        merge(&merge(own, &self.pushed_at(now), now), &self.local, now)
    }
}

pub fn read(store: &dyn SharedStore) -> Result<SwitchBoard, RecordError> {
    load(store, KEY)
}

/// Publishes (or renews) the set of instance `name`, configured at `configured_at`, until
/// `until`. A copy of an older configuration (a draining listener's) never overwrites a
/// newer one. Returns whether the set is new or changed (to log it once, not every tick).
pub fn push(
    store: &dyn SharedStore,
    name: &str,
    switches: &Switches,
    configured_at: Instant,
    until: Instant,
    now: Instant,
) -> Result<bool, RecordError> {
    update(store, KEY, |board: &mut SwitchBoard| {
        board.pushed.retain(|p| p.until > now || p.name == name);
        let room = board.pushed.len() < MAX_PUSHERS;
        match board.pushed.iter_mut().find(|p| p.name == name) {
            // Workers configure the same instance milliseconds apart: only a copy configured
            // clearly earlier (a draining one) yields.
            Some(p) if p.configured_at.0 > configured_at.0 + SAME_CONFIGURATION.0 => (false, false),
            Some(p) => {
                let changed = p.switches != *switches || p.until <= now;
                p.switches = switches.clone();
                p.until = until;
                p.configured_at = configured_at;
                (changed, true)
            }
            None if room => {
                board.pushed.push(Pushed {
                    name: name.to_string(),
                    switches: switches.clone(),
                    until,
                    configured_at,
                });
                (true, true)
            }
            None => (false, false),
        }
    })
}

/// Applies a control-endpoint action to the local switches.
pub fn control(
    store: &dyn SharedStore,
    request: &ControlRequest,
    set_by: &str,
    now: Instant,
) -> Result<Result<Change, ControlError>, RecordError> {
    update(store, KEY, |board: &mut SwitchBoard| {
        let mut local = board.local.clone();
        match apply(&mut local, request, set_by, now) {
            Ok(change) => {
                let changed = change.changed;
                board.local = local;
                (Ok(change), changed)
            }
            Err(err) => (Err(err), false),
        }
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::control::parse_request;
    use crate::state::store::memory::MemoryStore;

    fn freeze() -> Switches {
        let mut s = Switches::default();
        let request = parse_request("POST", "/freeze", b"{}").unwrap();
        apply(&mut s, &request, "config", Instant(0)).unwrap();
        s
    }

    #[test]
    fn pushed_switches_apply_until_their_lease_ends() {
        let store = MemoryStore::default();
        assert!(push(
            &store,
            "freeze",
            &freeze(),
            Instant(900),
            Instant(2_000),
            Instant(1_000)
        )
        .unwrap());
        assert!(!push(
            &store,
            "freeze",
            &freeze(),
            Instant(900),
            Instant(3_000),
            Instant(1_500)
        )
        .unwrap());
        let board = read(&store).unwrap();
        assert!(board
            .effective(&Switches::default(), Instant(2_500))
            .frozen(Instant(2_500)));
        assert!(!board
            .effective(&Switches::default(), Instant(3_001))
            .frozen(Instant(3_001)));
    }

    #[test]
    fn every_worker_of_one_configuration_renews() {
        let store = MemoryStore::default();
        // Worker B configured 1 ms after worker A; A alone keeps seeing traffic.
        push(
            &store,
            "f",
            &freeze(),
            Instant(101),
            Instant(4_000),
            Instant(101),
        )
        .unwrap();
        for t in (2_000..20_000).step_by(2_000) {
            push(
                &store,
                "f",
                &freeze(),
                Instant(100),
                Instant(t + 4_000),
                Instant(t),
            )
            .unwrap();
        }
        assert!(read(&store)
            .unwrap()
            .pushed_at(Instant(19_000))
            .frozen(Instant(19_000)));
    }

    #[test]
    fn a_draining_copy_never_overwrites_its_replacement() {
        let store = MemoryStore::default();
        push(
            &store,
            "kill",
            &freeze(),
            Instant(10_000),
            Instant(61_000),
            Instant(60_000),
        )
        .unwrap();
        push(
            &store,
            "kill",
            &freeze(),
            Instant(59_990),
            Instant(62_000),
            Instant(61_000),
        )
        .unwrap();
        let stale = push(
            &store,
            "kill",
            &Switches::default(),
            Instant(10_000),
            Instant(63_000),
            Instant(61_500),
        );
        assert!(!stale.unwrap());
        assert!(read(&store)
            .unwrap()
            .pushed_at(Instant(61_500))
            .frozen(Instant(61_500)));
    }

    #[test]
    fn control_changes_local_switches_and_normal_clears_them() {
        let store = MemoryStore::default();
        let kill = parse_request("POST", "/kill", br#"{"scope": {"all": true}}"#).unwrap();
        let change = control(&store, &kill, "control 127.0.0.1:1", Instant(5))
            .unwrap()
            .unwrap();
        assert!(change.changed);
        assert_eq!(read(&store).unwrap().local.kill.len(), 1);
        let normal = parse_request("POST", "/normal", b"").unwrap();
        control(&store, &normal, "control 127.0.0.1:1", Instant(6))
            .unwrap()
            .unwrap();
        assert!(read(&store).unwrap().local.kill.is_empty());
    }

    #[test]
    fn board_round_trips_and_bounds_pushers() {
        let board = SwitchBoard {
            local: freeze(),
            pushed: vec![Pushed {
                name: "a".into(),
                switches: freeze(),
                until: Instant(9),
                configured_at: Instant(3),
            }],
        };
        assert_eq!(SwitchBoard::decode(&board.encode()).unwrap(), board);
        let mut w = Writer::new();
        Switches::default().write(&mut w);
        w.u8(200);
        assert_eq!(SwitchBoard::decode(&w.finish()), Err(DecodeError::TooLong));
    }
}
