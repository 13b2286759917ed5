//! Conversations spread over worker threads. Each TCP connection belongs to one worker (by
//! a hash of its two endpoints), which runs its own [`Tracker`] and renders its reports;
//! the reading thread hands out segments in rounds and puts the rendered results back in
//! the order one tracker would have produced them: by the frame that ended each
//! conversation, then (at the end of the capture) by first segment. The output does not
//! depend on the number of workers.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::Totals;
use super::conversations::{ExpiryClock, Report, Tracker};
use super::segments::Segment;

/// Frames per round: large enough that the channel traffic is noise, small enough that
/// results come back steadily.
pub const ROUND_FRAMES: usize = 4096;
/// Rounds in flight before the reader waits for the oldest one's results.
const ROUNDS_IN_FLIGHT: usize = 4;

/// What a worker replays, in frame order.
enum Item {
    /// Idle conversations are due at this frame and time (sent to every worker).
    Tick { frame: u64, ts_ns: u64 },
    /// One segment, its payload copied into the round's buffer.
    Segment {
        frame: u64,
        ts_ns: u64,
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        syn: bool,
        ack: bool,
        fin: bool,
        rst: bool,
        payload: std::ops::Range<usize>,
    },
}

/// What one worker gets for one round.
#[derive(Default)]
struct Round {
    items: Vec<Item>,
    data: Vec<u8>,
}

enum Job {
    Round(Round),
    /// End of capture at this time: judge what is still open.
    Finish(u64),
}

/// A worker's answer: rendered reports keyed for ordering, in the order produced.
type Answer<T> = Vec<(u64, T)>;

/// The reading side: hands segments to workers and returns their rendered reports, in
/// order, to `sink`.
pub struct Shards<T> {
    jobs: Vec<SyncSender<Job>>,
    answers: Vec<Receiver<Answer<T>>>,
    rounds: Vec<Round>,
    frames_in_round: usize,
    in_flight: usize,
    expiry: ExpiryClock,
    hasher: foldhash::fast::RandomState,
}

impl<T: Send> Shards<T> {
    /// Starts `workers` threads in `scope`, each with its own tracker; `render` turns a
    /// report into what the sink gets. Each worker adds the outcomes it judged to
    /// `totals` when it ends.
    pub fn start<'s, 'env, R>(
        scope: &'s std::thread::Scope<'s, 'env>,
        workers: usize,
        tls_ports: &'env [u16],
        record: bool,
        render: &'env R,
        totals: &'s std::sync::Mutex<Totals>,
    ) -> Self
    where
        R: Fn(Report) -> T + Sync,
        T: 's,
    {
        let workers = workers.max(1);
        let mut jobs = Vec::with_capacity(workers);
        let mut answers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (job_tx, job_rx) = sync_channel::<Job>(ROUNDS_IN_FLIGHT + 1);
            let (answer_tx, answer_rx) = sync_channel::<Answer<T>>(ROUNDS_IN_FLIGHT + 1);
            scope.spawn(move || {
                let mut counts = Totals::default();
                work(
                    Tracker::new(tls_ports.to_vec(), record),
                    &job_rx,
                    &answer_tx,
                    |r| {
                        counts.count(&r.outcome);
                        render(r)
                    },
                );
                if let Ok(mut t) = totals.lock() {
                    t.add_outcomes(&counts);
                }
            });
            jobs.push(job_tx);
            answers.push(answer_rx);
        }
        Shards {
            rounds: (0..workers).map(|_| Round::default()).collect(),
            jobs,
            answers,
            frames_in_round: 0,
            in_flight: 0,
            expiry: ExpiryClock::default(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Takes the segment of frame number `frame`; may pass finished results to `sink`.
    pub fn segment(
        &mut self,
        frame: u64,
        ts_ns: u64,
        seg: &Segment<'_>,
        sink: &mut impl FnMut(T),
    ) -> Result<(), WorkerGone> {
        if self.expiry.due(ts_ns) {
            for round in &mut self.rounds {
                round.items.push(Item::Tick { frame, ts_ns });
            }
        }
        let (a, b) = if seg.src <= seg.dst {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        };
        let worker = (self.hasher.hash_one((a, b)) % self.rounds.len() as u64) as usize;
        let round = &mut self.rounds[worker];
        let start = round.data.len();
        round.data.extend_from_slice(seg.payload);
        round.items.push(Item::Segment {
            frame,
            ts_ns,
            src: seg.src,
            dst: seg.dst,
            seq: seg.seq,
            syn: seg.syn,
            ack: seg.ack,
            fin: seg.fin,
            rst: seg.rst,
            payload: start..round.data.len(),
        });
        self.frames_in_round += 1;
        if self.frames_in_round >= ROUND_FRAMES {
            self.send_round()?;
            if self.in_flight > ROUNDS_IN_FLIGHT {
                self.collect_round(sink)?;
            }
        }
        Ok(())
    }

    fn send_round(&mut self) -> Result<(), WorkerGone> {
        for (jobs, round) in self.jobs.iter().zip(self.rounds.iter_mut()) {
            jobs.send(Job::Round(std::mem::take(round)))
                .map_err(|_| WorkerGone)?;
        }
        self.frames_in_round = 0;
        self.in_flight += 1;
        Ok(())
    }

    /// The oldest round's results from every worker, merged by ending frame.
    fn collect_round(&mut self, sink: &mut impl FnMut(T)) -> Result<(), WorkerGone> {
        let mut merged = Vec::new();
        for answers in &self.answers {
            merged.extend(answers.recv().map_err(|_| WorkerGone)?);
        }
        merged.sort_by_key(|(frame, _)| *frame); // stable: a worker's own order is kept
        merged.into_iter().for_each(|(_, t)| sink(t));
        self.in_flight -= 1;
        Ok(())
    }

    /// End of the capture at `last_ts`: every round's results, then the conversations
    /// still open, ordered by their first segment.
    pub fn finish(mut self, last_ts: u64, sink: &mut impl FnMut(T)) -> Result<(), WorkerGone> {
        self.send_round()?;
        while self.in_flight > 0 {
            self.collect_round(sink)?;
        }
        for jobs in &self.jobs {
            jobs.send(Job::Finish(last_ts)).map_err(|_| WorkerGone)?;
        }
        let mut merged = Vec::new();
        for answers in &self.answers {
            merged.extend(answers.recv().map_err(|_| WorkerGone)?);
        }
        merged.sort_by_key(|(first_ns, _)| *first_ns);
        merged.into_iter().for_each(|(_, t)| sink(t));
        Ok(())
    }
}

/// A worker thread stopped answering (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("an analysis worker stopped unexpectedly")]
pub struct WorkerGone;

/// One worker: rounds in, rendered reports out, until the finish job or a closed channel.
fn work<T>(
    mut tracker: Tracker,
    jobs: &Receiver<Job>,
    answers: &SyncSender<Answer<T>>,
    mut render: impl FnMut(Report) -> T,
) {
    let mut done = Vec::new();
    while let Ok(job) = jobs.recv() {
        let mut answer = Vec::new();
        match job {
            Job::Round(round) => {
                for item in &round.items {
                    let frame = match *item {
                        Item::Tick { frame, ts_ns } => {
                            tracker.tick(ts_ns, &mut done);
                            frame
                        }
                        Item::Segment {
                            frame,
                            ts_ns,
                            src,
                            dst,
                            seq,
                            syn,
                            ack,
                            fin,
                            rst,
                            ref payload,
                        } => {
                            let seg = Segment {
                                src,
                                dst,
                                seq,
                                syn,
                                ack,
                                fin,
                                rst,
                                payload: round.data.get(payload.clone()).unwrap_or_default(),
                            };
                            tracker.segment(ts_ns, &seg, &mut done);
                            frame
                        }
                    };
                    answer.extend(done.drain(..).map(|r| (frame, render(r))));
                }
            }
            Job::Finish(last_ts) => {
                answer.extend(
                    tracker
                        .finish(last_ts)
                        .into_iter()
                        .map(|r| (r.first_ns, render(r))),
                );
                let _ = answers.send(answer);
                return;
            }
        }
        if answers.send(answer).is_err() {
            return;
        }
    }
}
