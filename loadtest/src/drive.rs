//! The open-loop engine shared by both targets: a scheduler thread that
//! sends what is due every tick, and a collector that records each answer
//! against its request's intended send time.
//!
//! Request ids are global sequence numbers over the run, so the intended
//! time of an answer follows from its id and its phase's schedule; the
//! scheduler only tells the collector when each batch actually left. No
//! task per request: readers hand the collector whole read chunks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omniroute_client::{Order, OrderKey};
use omniroute_loadtest::{
    Audit, FollowUp, FollowUpMix, Outcome, PhaseSeconds, Recorder, Schedule, SecondBin,
};
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};

use crate::sinks::Sink;

/// Requests sent but not answered, over all connections; past it the
/// scheduler waits, and the wait shows in the corrected latencies.
pub const MAX_INFLIGHT_REQUESTS: u64 = 200_000;
/// Ids of confirms, cancels and ships have this bit set; the rest is the
/// follow-up's own serial.
pub const FOLLOW_UP_BIT: u64 = 1 << 63;
/// Events queued for the collector before readers and the scheduler wait.
const COLLECTOR_QUEUE: usize = 65_536;

/// One answered request, as a reader decoded it.
pub struct Answer {
    pub id: u64,
    pub done: Instant,
    pub outcome: Outcome,
    /// The reject or error code, when there is one.
    pub code: Option<u16>,
    /// (sku, node, units) of a routed order.
    pub allocations: Vec<(String, String, u32)>,
    /// The daemon's id of a routed order (0 otherwise, and for Redis).
    pub order_id: u64,
}

pub enum Event {
    Phase {
        first: u64,
        schedule: Schedule,
        /// How long the phase sends for.
        length: Duration,
        measured: bool,
    },
    Sent {
        first: u64,
        count: u64,
        at: Instant,
    },
    Answers(Vec<Answer>),
    /// Answer when every request below `end` is answered or `deadline` has
    /// passed (the rest then count as timed out).
    Drain {
        end: u64,
        deadline: Instant,
        reply: oneshot::Sender<PhaseResult>,
    },
    /// Hand back the run's audit and routed ids.
    Finish {
        reply: oneshot::Sender<RunResult>,
    },
}

pub struct PhaseResult {
    pub recorder: Recorder,
}

#[derive(Default)]
pub struct RunResult {
    pub audit: Audit,
    /// Orders answered routed: (request id, the daemon's order id). The
    /// request id names the order's key (with the prefix).
    pub routed: Vec<(u64, u64)>,
    /// Every second of each measured phase, in order.
    pub intervals: Vec<Interval>,
    pub follow_ups: std::collections::BTreeMap<String, u64>,
    /// What each routed order was told, kept when the scenario can make
    /// the daemon take promises back (node events).
    pub promises: HashMap<u64, Vec<(String, String, u32)>>,
    /// How follow-ups ended each order, for the audit of orders the daemon
    /// has archived (closed and retired) by the time they are read back.
    pub endings: Endings,
    /// When each measured phase began, since the first: (seconds, its rate).
    pub marks: Vec<(f64, String)>,
    /// When the first measured phase began: the time axis's zero.
    pub first_measured: Option<Instant>,
}

/// What the acknowledged follow-ups did to routed orders.
#[derive(Default)]
pub struct Endings {
    /// Orders whose cancel was acknowledged.
    pub cancelled: std::collections::HashSet<u64>,
    /// Units acknowledged shipped per order: (sku, node, units).
    pub shipped: HashMap<u64, Vec<(String, String, u32)>>,
}

/// One second of a measured phase.
pub type Interval = SecondBin;

/// What the collector sends after routed orders, when the scenario has
/// follow-ups (QUIC only: Redis does reservations alone).
pub struct FollowUps {
    pub mix: FollowUpMix,
    pub rng: rand::rngs::StdRng,
    pub channel: String,
    pub prefix: String,
    pub sink: Sink,
    next_serial: u64,
    pending: HashMap<u64, Pending>,
}

enum Pending {
    Confirm {
        order: u64,
        ship: Option<Vec<(String, String, u32)>>,
    },
    Cancel {
        order: u64,
        allocations: Vec<(String, String, u32)>,
    },
    Ship {
        order: u64,
        sku: String,
        node: String,
        qty: u32,
    },
}

impl FollowUps {
    pub fn new(mix: FollowUpMix, seed: u64, channel: String, prefix: String, sink: Sink) -> Self {
        FollowUps {
            mix,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            channel,
            prefix,
            sink,
            next_serial: 0,
            pending: HashMap::new(),
        }
    }

    fn key(&self, order: u64) -> OrderKey {
        OrderKey {
            channel: self.channel.clone(),
            client_order_id: format!("{}{order}", self.prefix),
        }
    }

    fn serial(&mut self, pending: Pending) -> u64 {
        self.next_serial += 1;
        self.pending.insert(self.next_serial, pending);
        FOLLOW_UP_BIT | self.next_serial
    }

    fn after_routed(
        &mut self,
        order: u64,
        allocations: &[(String, String, u32)],
        out: &mut Vec<(u64, omniroute_client::protocol::Request)>,
    ) {
        use omniroute_client::protocol::Request;
        let roll = self.rng.random::<f64>();
        let ship_roll = self.rng.random::<f64>();
        match self.mix.decide(roll, ship_roll) {
            FollowUp::Confirm { then_ship } => {
                let ship = then_ship.then(|| allocations.to_vec());
                let id = self.serial(Pending::Confirm { order, ship });
                out.push((id, Request::Confirm(self.key(order))));
            }
            FollowUp::Cancel => {
                let id = self.serial(Pending::Cancel {
                    order,
                    allocations: allocations.to_vec(),
                });
                out.push((id, Request::Cancel(self.key(order))));
            }
            FollowUp::Nothing => {}
        }
    }

    /// Counts a follow-up's answer and sends what follows it.
    fn answered(
        &mut self,
        answer: &Answer,
        audit: &mut Audit,
        endings: &mut Endings,
        counts: &mut std::collections::BTreeMap<String, u64>,
        out: &mut Vec<(u64, omniroute_client::protocol::Request)>,
    ) {
        let ok = answer.outcome == Outcome::Routed;
        let Some(pending) = self.pending.remove(&(answer.id & !FOLLOW_UP_BIT)) else {
            return;
        };
        let name = match pending {
            Pending::Confirm { order, ship } => {
                if ok {
                    for (sku, node, qty) in ship.into_iter().flatten() {
                        let request = omniroute_client::protocol::Request::NodeShip {
                            node: node.clone(),
                            order: self.key(order),
                            sku: sku.clone(),
                            qty,
                        };
                        let id = self.serial(Pending::Ship {
                            order,
                            sku,
                            node,
                            qty,
                        });
                        out.push((id, request));
                    }
                }
                "confirm"
            }
            Pending::Cancel { order, allocations } => {
                if ok {
                    for (sku, node, qty) in &allocations {
                        audit.release(sku, node, *qty);
                    }
                    endings.cancelled.insert(order);
                }
                "cancel"
            }
            Pending::Ship {
                order,
                sku,
                node,
                qty,
            } => {
                if ok {
                    endings
                        .shipped
                        .entry(order)
                        .or_default()
                        .push((sku, node, qty));
                }
                "ship"
            }
        };
        let result = if ok { "ok" } else { "failed" };
        *counts.entry(format!("{name}_{result}")).or_default() += 1;
    }
}

struct PhaseState {
    first: u64,
    schedule: Schedule,
    measured: bool,
    /// A measured phase's seconds, until it is drained.
    seconds: Option<PhaseSeconds>,
    recorder: Recorder,
    answered: u64,
}

/// The collector's queue: readers, the scheduler and the run send to it.
pub fn channel() -> (mpsc::Sender<Event>, mpsc::Receiver<Event>) {
    mpsc::channel(COLLECTOR_QUEUE)
}

/// Records answers into the phase and the second they belong to; prints
/// a live line each second.
pub struct Collector {
    run_start: Instant,
    /// Microseconds from `run_start` to when each request left.
    sent_us: Vec<u32>,
    answered: Vec<bool>,
    phases: Vec<PhaseState>,
    drain: Option<(u64, Instant, oneshot::Sender<PhaseResult>)>,
    outstanding: Arc<AtomicU64>,
    result: RunResult,
    follow_ups: Option<FollowUps>,
    keep_promises: bool,
    /// The live line's second (by the wall clock, warmup too).
    second: Recorder,
    second_sent: u64,
    second_start: Instant,
    first_measured: Option<Instant>,
    seconds: u64,
}

impl Collector {
    pub fn spawn(
        receiver: mpsc::Receiver<Event>,
        outstanding: Arc<AtomicU64>,
        follow_ups: Option<FollowUps>,
        keep_promises: bool,
        label: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let now = Instant::now();
        let collector = Collector {
            run_start: now,
            sent_us: Vec::new(),
            answered: Vec::new(),
            phases: Vec::new(),
            drain: None,
            outstanding,
            result: RunResult::default(),
            follow_ups,
            keep_promises,
            second: Recorder::new(),
            second_sent: 0,
            second_start: now,
            first_measured: None,
            seconds: 0,
        };
        tokio::spawn(collector.run(receiver, label))
    }

    async fn run(mut self, mut events: mpsc::Receiver<Event>, label: &'static str) {
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    match event {
                        Event::Phase { first, schedule, length, measured } => self.phase(first, schedule, length, measured),
                        Event::Sent { first, count, at } => {
                            let end = (first + count) as usize;
                            if self.sent_us.len() < end {
                                self.sent_us.resize(end, 0);
                                self.answered.resize(end, false);
                            }
                            let offset = at.saturating_duration_since(self.run_start).as_micros().min(u128::from(u32::MAX)) as u32;
                            self.sent_us[first as usize..end].fill(offset);
                            self.second_sent += count;
                            if let Some(seconds) = self.phase_of(first).and_then(|p| p.seconds.as_mut()) {
                                seconds.sent(at, count);
                            }
                        }
                        Event::Answers(answers) => self.answers(answers),
                        Event::Drain { end, deadline, reply } => self.drain = Some((end, deadline, reply)),
                        Event::Finish { reply } => {
                            self.result.first_measured = self.first_measured;
                            let _ = reply.send(std::mem::take(&mut self.result));
                            return;
                        }
                    }
                }
                _ = poll.tick() => {}
            }
            self.tick_second(label);
            self.try_drain();
        }
    }

    /// A phase begins; a measured one is cut into seconds and marked on
    /// the time axis with its rate.
    fn phase(&mut self, first: u64, schedule: Schedule, length: Duration, measured: bool) {
        let seconds = measured.then(|| {
            let first_measured = *self.first_measured.get_or_insert(schedule.start);
            let offset_s = schedule
                .start
                .saturating_duration_since(first_measured)
                .as_secs_f64();
            self.result
                .marks
                .push((offset_s, format!("{:.0}/s", schedule.rate_per_s)));
            let wall = std::time::SystemTime::now() - schedule.start.elapsed();
            PhaseSeconds::new(schedule.start, wall, offset_s, length)
        });
        self.phases.push(PhaseState {
            first,
            schedule,
            measured,
            seconds,
            recorder: Recorder::new(),
            answered: 0,
        });
    }

    fn phase_of(&mut self, id: u64) -> Option<&mut PhaseState> {
        self.phases.iter_mut().rev().find(|p| p.first <= id)
    }

    fn answers(&mut self, answers: Vec<Answer>) {
        let mut follow: Vec<(u64, omniroute_client::protocol::Request)> = Vec::new();
        for answer in answers {
            if answer.id & FOLLOW_UP_BIT != 0 {
                if let Some(f) = self.follow_ups.as_mut() {
                    f.answered(
                        &answer,
                        &mut self.result.audit,
                        &mut self.result.endings,
                        &mut self.result.follow_ups,
                        &mut follow,
                    );
                }
                continue;
            }
            let index = answer.id as usize;
            if index >= self.answered.len() || self.answered[index] {
                // Unknown, or answered after it was counted as timed out.
                continue;
            }
            self.answered[index] = true;
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
            let sent = self.run_start + Duration::from_micros(u64::from(self.sent_us[index]));
            if answer.outcome == Outcome::Routed {
                for (sku, node, qty) in &answer.allocations {
                    self.result.audit.tell(sku, node, *qty);
                }
                self.result.routed.push((answer.id, answer.order_id));
                if self.keep_promises {
                    self.result
                        .promises
                        .insert(answer.id, answer.allocations.clone());
                }
                if let Some(f) = self.follow_ups.as_mut() {
                    f.after_routed(answer.id, &answer.allocations, &mut follow);
                }
            }
            let Some(phase) = self.phase_of(answer.id) else {
                continue;
            };
            let intended = phase.schedule.intended(answer.id - phase.first);
            phase
                .recorder
                .record(intended, sent, answer.done, answer.outcome);
            if let Some(code) = answer.code {
                phase.recorder.record_code(answer.outcome, code);
            }
            if let Some(seconds) = phase.seconds.as_mut() {
                let latency_us = answer.done.saturating_duration_since(intended).as_micros();
                seconds.answered(answer.done, latency_us as u64, answer.outcome, answer.code);
            }
            phase.answered += 1;
            self.second
                .record(intended, sent, answer.done, answer.outcome);
        }
        if let (false, Some(f)) = (follow.is_empty(), self.follow_ups.as_ref()) {
            f.sink.send_requests(follow);
        }
    }

    fn tick_second(&mut self, label: &str) {
        let elapsed = self.second_start.elapsed();
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let measured = self.phases.last().is_some_and(|p| p.measured);
        let errors = self.second.count(Outcome::Error)
            + self.second.count(Outcome::TimedOut)
            + self.second.count(Outcome::Overloaded);
        self.seconds += 1;
        let seconds = elapsed.as_secs_f64();
        let p99 = self.second.corrected.value_at_quantile(0.99);
        println!(
            "{label} t={:>3}s {} offered {:>9.0}/s achieved {:>9.0}/s p99 {:>7} us errors {errors} (routed {} short {})",
            self.seconds,
            if measured { "measured" } else { "warmup  " },
            self.second_sent as f64 / seconds,
            self.second.total() as f64 / seconds,
            p99,
            self.second.count(Outcome::Routed),
            self.second.count(Outcome::Short),
        );
        self.second = Recorder::new();
        self.second_sent = 0;
        self.second_start = Instant::now();
    }

    fn try_drain(&mut self) {
        let Some((end, deadline, _)) = &self.drain else {
            return;
        };
        let (end, deadline) = (*end, *deadline);
        let Some(index) = self.phases.iter().rposition(|p| p.first < end) else {
            return;
        };
        let first = self.phases[index].first;
        let all = self.phases[index].answered >= end - first;
        if !all && Instant::now() < deadline {
            return;
        }
        let now = Instant::now();
        for id in first..end {
            let i = id as usize;
            if i < self.answered.len() && !self.answered[i] {
                self.answered[i] = true;
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
                let sent = self.run_start + Duration::from_micros(u64::from(self.sent_us[i]));
                let phase = &mut self.phases[index];
                let intended = phase.schedule.intended(id - first);
                phase
                    .recorder
                    .record(intended, sent, deadline, Outcome::TimedOut);
                if let Some(seconds) = phase.seconds.as_mut() {
                    let latency_us = deadline.saturating_duration_since(intended).as_micros();
                    seconds.answered(now, latency_us as u64, Outcome::TimedOut, None);
                }
            }
        }
        let (_, _, reply) = self.drain.take().expect("drain");
        if let Some(seconds) = self.phases[index].seconds.take() {
            self.result.intervals.extend(seconds.finish());
        }
        let recorder = std::mem::take(&mut self.phases[index].recorder);
        let _ = reply.send(PhaseResult { recorder });
    }
}

/// Builds the order with a given id; the scheduler thread owns it.
pub trait OrderSource: Send {
    fn order(&mut self, id: u64) -> Order;
}

/// Sends `rate × duration` orders from `first` on schedule, from a thread
/// of its own (tokio's timers tick in milliseconds; this one ticks every
/// `tick`). Returns the id after the last and when the phase started.
#[allow(clippy::too_many_arguments)]
pub fn run_phase(
    sink: &Sink,
    orders: &mut dyn OrderSource,
    events: &mpsc::Sender<Event>,
    outstanding: &AtomicU64,
    first: u64,
    rate: f64,
    duration: Duration,
    tick: Duration,
    measured: bool,
) -> (u64, Instant) {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let schedule = Schedule {
        start: Instant::now(),
        rate_per_s: rate,
    };
    let _ = events.blocking_send(Event::Phase {
        first,
        schedule,
        length: duration,
        measured,
    });
    let mut next = 0u64;
    let mut batch: Vec<(u64, Order)> = Vec::new();
    while next < total {
        std::thread::sleep(tick);
        let due = schedule.due(Instant::now()).min(total);
        while next < due {
            let room = MAX_INFLIGHT_REQUESTS.saturating_sub(outstanding.load(Ordering::Relaxed));
            if room == 0 {
                std::thread::sleep(tick);
                continue;
            }
            let end = due.min(next + room);
            batch.clear();
            for i in next..end {
                batch.push((first + i, orders.order(first + i)));
            }
            outstanding.fetch_add(end - next, Ordering::Relaxed);
            let _ = events.blocking_send(Event::Sent {
                first: first + next,
                count: end - next,
                at: Instant::now(),
            });
            sink.send_orders(&mut batch);
            next = end;
        }
    }
    (first + total, schedule.start)
}
