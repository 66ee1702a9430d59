//! Several guests on one CPU, round-robin, preempted by the local APIC's one-shot timer.
//!
//! Each turn ("slice") of a guest arms the timer for [`Quantum::timer_count`] counts and
//! runs the guest until an interrupt exit ([`Exit::Interrupt`]) with a new timer tick (the quantum is over), or it
//! stops, or it halts. Exits inside a slice go to the handler as with
//! [`super::run_guest`]; the timer is *not* re-armed per guest entry, so a guest that exits
//! constantly still ends its slice when the quantum runs out (a tick that arrives while
//! the host handles an exit makes the next guest entry exit at once).
//!
//! - HLT (the scheduler handles it, not the handler): RIP moves past the HLT; if a
//!   virtual interrupt is pending and the guest's IF is 1, it resumes at once (the
//!   interrupt is delivered); otherwise the guest is *blocked* and leaves its slice. A
//!   blocked guest runs again once [`Guest::can_wake`]; when every remaining guest is
//!   blocked and none can wake, all are terminated: "halted with nothing to wake it".
//! - Exited / Terminated guests leave the ring; [`run_all`] returns when none is left.
//! - Device interrupts ([`Interrupts`]): after every exit of a slice, and before a
//!   blocked guest is considered, the interrupts routed to that guest are queued on it
//!   (so an MSI wakes a guest halted in HLT). When every remaining guest is blocked but
//!   an interrupt source is armed, the CPU waits (`sti; hlt`, at most one quantum)
//!   instead of ending them; each such wait counts as a slice of every blocked guest, so
//!   a guest waiting for an interrupt that never comes still runs out of time.
//! - Budget: a guest still running after [`Quantum::max_quanta_per_guest`] slices is
//!   terminated with "ran out of time" (so a guest that spins forever ends the run too).
//!
//! The ring logic is [`schedule`], generic over the task so host tests drive it with a
//! fake "run one slice" function.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{Action, Exit, Guest, GuestStatus, VirtualCpu};
use crate::arch::lapic;

/// How long a slice is and how many a guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantum {
    /// One-shot LAPIC timer count per slice (divide 16; see [`lapic`] for the rate).
    pub timer_count: u32,
    /// Slices a guest may use before it is terminated ("ran out of time").
    pub max_quanta_per_guest: u64,
    /// A slice also ends after this many exits (a fallback should the timer never fire).
    pub max_exits_per_slice: u64,
}

impl Default for Quantum {
    /// ≈ 5 ms slices ([`lapic::DEFAULT_QUANTUM_COUNT`]), 1000 slices (≈ 5 s of guest
    /// time) per guest, 1,000,000 exits per slice.
    fn default() -> Self {
        Self {
            timer_count: lapic::DEFAULT_QUANTUM_COUNT,
            max_quanta_per_guest: 1000,
            max_exits_per_slice: 1_000_000,
        }
    }
}

/// How one slice ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceEnd {
    /// The quantum is over; the task wants to run again.
    QuantumOver,
    /// The task halted with nothing to wake it now.
    Blocked,
    /// The task is done.
    Ended(GuestStatus),
}

pub const HALTED_REASON: &str = "halted with nothing to wake it";

/// Where device interrupts come from (the VFIO layer's routes, in the kernel binary).
pub trait Interrupts<V: VirtualCpu> {
    /// Queue on `guest` every device interrupt routed to it since the last call
    /// (collecting what the host took for all guests; others' wait for their turn).
    fn deliver(&self, guest: &mut Guest<V>);
    /// Could a device interrupt still arrive for some guest (a source is enabled, or
    /// one is waiting to be delivered)?
    fn armed(&self) -> bool;
}

/// No device interrupts.
pub struct NoInterrupts;

impl<V: VirtualCpu> Interrupts<V> for NoInterrupts {
    fn deliver(&self, _guest: &mut Guest<V>) {}
    fn armed(&self) -> bool {
        false
    }
}

/// Round-robin over `tasks` until every one has ended. `run_slice` runs one slice;
/// `can_wake` says whether a blocked task may run again (`poll` runs on it first: it
/// hands the task its device interrupts). A task gets at most `max_quanta` slices
/// (blocked ones included); then it is terminated with "ran out of time". When every
/// task is blocked and none can wake, `idle` is asked to wait for an interrupt: `true`
/// (it waited) counts one slice for each blocked task and tries again; `false` (nothing
/// could come) terminates them all. `ended` is told about each task as soon as it has
/// ended (so what it held can be released while the others still run). Returns each
/// task's final status, in the order of `tasks`.
pub fn schedule<T>(
    tasks: &mut [T],
    max_quanta: u64,
    run_slice: &mut dyn FnMut(&mut T) -> SliceEnd,
    can_wake: &dyn Fn(&T) -> bool,
    poll: &mut dyn FnMut(&mut T),
    idle: &mut dyn FnMut() -> bool,
    ended: &mut dyn FnMut(&mut T, &GuestStatus),
) -> Vec<GuestStatus> {
    let n = tasks.len();
    let mut ring: VecDeque<usize> = (0..n).collect();
    let mut blocked = vec![false; n];
    let mut quanta = vec![0u64; n];
    let mut result: Vec<Option<GuestStatus>> = vec![None; n];
    while !ring.is_empty() {
        let mut chosen = None;
        for _ in 0..ring.len() {
            let i = ring.pop_front().expect("ring is not empty");
            if blocked[i] {
                poll(&mut tasks[i]);
            }
            if !blocked[i] || can_wake(&tasks[i]) {
                blocked[i] = false;
                chosen = Some(i);
                break;
            }
            ring.push_back(i);
        }
        let Some(i) = chosen else {
            if idle() {
                // Every task in the ring is blocked: the wait was a slice for each.
                let waiting: Vec<usize> = ring.drain(..).collect();
                for i in waiting {
                    quanta[i] += 1;
                    if quanta[i] >= max_quanta {
                        let status = GuestStatus::Terminated(format!(
                            "ran out of time ({max_quanta} quanta)"
                        ));
                        ended(&mut tasks[i], &status);
                        result[i] = Some(status);
                    } else {
                        ring.push_back(i);
                    }
                }
                continue;
            }
            for i in ring.drain(..) {
                let status = GuestStatus::Terminated(HALTED_REASON.into());
                ended(&mut tasks[i], &status);
                result[i] = Some(status);
            }
            break;
        };
        quanta[i] += 1;
        match run_slice(&mut tasks[i]) {
            SliceEnd::Ended(status) => {
                ended(&mut tasks[i], &status);
                result[i] = Some(status);
            }
            SliceEnd::QuantumOver | SliceEnd::Blocked if quanta[i] >= max_quanta => {
                let status =
                    GuestStatus::Terminated(format!("ran out of time ({max_quanta} quanta)"));
                ended(&mut tasks[i], &status);
                result[i] = Some(status);
            }
            SliceEnd::QuantumOver => ring.push_back(i),
            SliceEnd::Blocked => {
                blocked[i] = true;
                ring.push_back(i);
            }
        }
    }
    result
        .into_iter()
        .map(|s| s.unwrap_or(GuestStatus::Terminated("never scheduled".into())))
        .collect()
}

/// Run `guests` round-robin until all have ended (see the module docs); every exit but
/// INTR and HLT goes to `handler` ([`Exit::Hypercall`]: hypercalls; the rest: typically
/// [`super::handle_common_exit`]). Needs [`lapic::init`] for preemption; without a local
/// APIC a slice ends only after [`Quantum::max_exits_per_slice`] exits, so a guest
/// spinning without exits would never yield. Returns `(name, final status)` in the order
/// of `guests` (each status also left in `guest.status`); the guests are dropped.
pub fn run_all<V: VirtualCpu>(
    mut guests: Vec<Guest<V>>,
    handler: &mut dyn FnMut(&mut Guest<V>, Exit) -> Action,
    ended: &mut dyn FnMut(&mut Guest<V>, &GuestStatus),
    interrupts: &dyn Interrupts<V>,
    quantum: Quantum,
) -> Vec<(String, GuestStatus)> {
    if lapic::get().is_none() {
        log::warn!(target: "sched", "no local APIC: guests are not preempted");
    }
    let statuses = schedule(
        &mut guests,
        quantum.max_quanta_per_guest,
        &mut |g: &mut Guest<V>| run_slice(g, handler, interrupts, &quantum),
        &|g: &Guest<V>| g.can_wake(),
        &mut |g: &mut Guest<V>| interrupts.deliver(g),
        &mut || {
            // Without a local APIC timer the wait could last forever: don't.
            if !interrupts.armed() || lapic::get().is_none() {
                return false;
            }
            lapic::arm_oneshot(quantum.timer_count);
            lapic::wait_for_interrupt();
            lapic::stop_timer();
            lapic::take_pending_interrupts();
            true
        },
        ended,
    );
    guests
        .iter_mut()
        .zip(statuses)
        .map(|(g, status)| {
            g.flush_console();
            g.status = status.clone();
            (g.name.clone(), status)
        })
        .collect()
}

/// One slice of `guest` (see the module docs).
pub fn run_slice<V: VirtualCpu>(
    guest: &mut Guest<V>,
    handler: &mut dyn FnMut(&mut Guest<V>, Exit) -> Action,
    interrupts: &dyn Interrupts<V>,
    quantum: &Quantum,
) -> SliceEnd {
    if matches!(
        guest.status,
        GuestStatus::Terminated(_) | GuestStatus::Exited(_)
    ) {
        return SliceEnd::Ended(guest.status.clone());
    }
    guest.status = GuestStatus::Running;
    let start = lapic::ticks();
    lapic::arm_oneshot(quantum.timer_count);
    let mut exits = 0u64;
    interrupts.deliver(guest);
    let end = loop {
        if guest.exits >= guest.exit_limit {
            break SliceEnd::Ended(GuestStatus::Terminated(format!(
                "exit limit of {} reached (exit storm?)",
                guest.exit_limit
            )));
        }
        if exits >= quantum.max_exits_per_slice {
            break SliceEnd::QuantumOver;
        }
        let exit = guest.vcpu.run();
        guest.exits += 1;
        exits += 1;
        // Device interrupts that arrived meanwhile (an INTR exit took them): queue them
        // before a HLT is judged.
        interrupts.deliver(guest);
        match exit {
            Exit::Interrupt => {
                if lapic::ticks() != start {
                    break SliceEnd::QuantumOver;
                }
            }
            Exit::Hlt => {
                guest.vcpu.skip_instruction();
                if !guest.can_wake() {
                    break SliceEnd::Blocked;
                }
            }
            other => match handler(guest, other) {
                Action::Resume => {}
                Action::Terminate(why) => break SliceEnd::Ended(GuestStatus::Terminated(why)),
                Action::Exited(code) => break SliceEnd::Ended(GuestStatus::Exited(code)),
            },
        }
    };
    // Stop the timer and drain a tick that fired meanwhile, so the next slice starts clean.
    lapic::stop_timer();
    lapic::take_pending_interrupts();
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake guest: a script of slice results, then "exited 0".
    struct Fake {
        script: VecDeque<SliceEnd>,
        wake: bool,
        runs: u32,
    }

    fn fake(script: &[SliceEnd]) -> Fake {
        Fake {
            script: script.iter().cloned().collect(),
            wake: false,
            runs: 0,
        }
    }

    fn run(tasks: &mut [Fake], max: u64, log: &mut Vec<usize>) -> Vec<GuestStatus> {
        let base = tasks.as_ptr() as usize;
        let index = |t: &Fake| (t as *const Fake as usize - base) / core::mem::size_of::<Fake>();
        let mut ended: Vec<(usize, GuestStatus)> = Vec::new();
        let result = schedule(
            tasks,
            max,
            &mut |t: &mut Fake| {
                log.push(index(t));
                t.runs += 1;
                t.script
                    .pop_front()
                    .unwrap_or(SliceEnd::Ended(GuestStatus::Exited(0)))
            },
            &|t: &Fake| t.wake,
            &mut |_t: &mut Fake| {},
            &mut || false,
            &mut |t: &mut Fake, status: &GuestStatus| ended.push((index(t), status.clone())),
        );
        // `ended` hears of every task exactly once, with its final status.
        ended.sort_by_key(|(i, _)| *i);
        let expected: Vec<(usize, GuestStatus)> = result.iter().cloned().enumerate().collect();
        assert_eq!(ended, expected);
        result
    }

    use SliceEnd::{Blocked, Ended, QuantumOver};

    #[test]
    fn round_robin_until_all_end() {
        let mut t = [
            fake(&[QuantumOver, QuantumOver]),
            fake(&[Ended(GuestStatus::Exited(7))]),
            fake(&[QuantumOver]),
        ];
        let mut log = Vec::new();
        let s = run(&mut t, 100, &mut log);
        assert_eq!(log, [0, 1, 2, 0, 2, 0]);
        assert_eq!(
            s,
            [
                GuestStatus::Exited(0),
                GuestStatus::Exited(7),
                GuestStatus::Exited(0)
            ]
        );
    }

    #[test]
    fn spinner_runs_out_of_time_others_finish() {
        let spin = fake(&vec![QuantumOver; 50]);
        let mut t = [spin, fake(&[QuantumOver, QuantumOver])];
        let mut log = Vec::new();
        let s = run(&mut t, 5, &mut log);
        assert_eq!(
            s[0],
            GuestStatus::Terminated("ran out of time (5 quanta)".into())
        );
        assert_eq!(s[1], GuestStatus::Exited(0));
        assert_eq!(t[0].runs, 5);
        assert_eq!(log, [0, 1, 0, 1, 0, 1, 0, 0]);
    }

    #[test]
    fn all_blocked_are_terminated() {
        let mut t = [fake(&[Blocked]), fake(&[QuantumOver, Blocked])];
        let mut log = Vec::new();
        let s = run(&mut t, 100, &mut log);
        assert_eq!(log, [0, 1, 1]);
        for st in s {
            assert_eq!(st, GuestStatus::Terminated(HALTED_REASON.into()));
        }
    }

    #[test]
    fn blocked_task_runs_again_when_it_can_wake() {
        let mut t = [fake(&[Blocked]), fake(&[QuantumOver, QuantumOver])];
        t[0].wake = true;
        let mut log = Vec::new();
        let s = run(&mut t, 100, &mut log);
        assert_eq!(log, [0, 1, 0, 1, 1]);
        assert_eq!(s, [GuestStatus::Exited(0), GuestStatus::Exited(0)]);
    }

    #[test]
    fn blocked_stays_out_while_others_run() {
        let mut t = [
            fake(&[Blocked]),
            fake(&[QuantumOver, QuantumOver, QuantumOver]),
        ];
        let mut log = Vec::new();
        let s = run(&mut t, 100, &mut log);
        assert_eq!(log, [0, 1, 1, 1, 1]);
        assert_eq!(s[1], GuestStatus::Exited(0));
        assert_eq!(s[0], GuestStatus::Terminated(HALTED_REASON.into()));
    }

    #[test]
    fn idle_waits_count_as_slices_until_a_wake() {
        let mut t = [fake(&[Blocked]), fake(&[Blocked])];
        let waits = core::cell::Cell::new(0u32);
        let mut polled = 0u32;
        let mut ended = Vec::new();
        let s = schedule(
            &mut t,
            4,
            &mut |t: &mut Fake| {
                t.runs += 1;
                t.script
                    .pop_front()
                    .unwrap_or(SliceEnd::Ended(GuestStatus::Exited(0)))
            },
            &|t: &Fake| t.wake,
            &mut |t: &mut Fake| {
                polled += 1;
                // The second wait delivers an interrupt to the first task.
                if waits.get() >= 2 && t.runs == 1 && !t.wake {
                    t.wake = true;
                }
            },
            &mut || {
                waits.set(waits.get() + 1);
                true
            },
            &mut |_t: &mut Fake, status: &GuestStatus| ended.push(status.clone()),
        );
        assert!(polled > 0);
        // Both woke after the second wait (the poll wakes whichever it sees first).
        assert_eq!(s[0], GuestStatus::Exited(0));
        assert!(waits.get() >= 2);
        // A task that never wakes runs out of time while the CPU idles.
        let mut t = [fake(&[Blocked])];
        let s = schedule(
            &mut t,
            3,
            &mut |t: &mut Fake| t.script.pop_front().unwrap_or(SliceEnd::Blocked),
            &|_t: &Fake| false,
            &mut |_t: &mut Fake| {},
            &mut || true,
            &mut |_t: &mut Fake, _status: &GuestStatus| {},
        );
        assert_eq!(
            s[0],
            GuestStatus::Terminated("ran out of time (3 quanta)".into())
        );
    }

    #[test]
    fn empty_ring() {
        let mut t: [Fake; 0] = [];
        assert!(run(&mut t, 1, &mut Vec::new()).is_empty());
    }
}
