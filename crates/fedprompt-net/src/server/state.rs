//! What the gRPC handlers and the round driver share: the known clients,
//! the open round and the counters, behind one lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fedprompt_fl::{EvalRound, FitRound, Phase};
use tokio::sync::watch;
use tonic::Status;
use tracing::warn;

use super::{RefusalKind, ServerStats};
use crate::auth::TokenStore;
use crate::events::{Event, EventSink};
use crate::proto;

/// The global parameters of the open round, as sent.
pub(super) struct Payload {
    pub(super) bytes: Bytes,
    pub(super) sha256: Bytes,
}

/// How the open training round's uploads are encoded (`[compression]`): the codec and the
/// global the deltas are taken from.
pub(super) struct Decoding {
    pub(super) codec: fedprompt_fl::codec::Codec,
    pub(super) global: fedprompt_fl::Params,
}

/// The open round of the federated core.
pub(super) enum Collector {
    Fit(FitRound),
    Eval(EvalRound),
}

/// `$body` with `$c` bound to the fit or the evaluation round.
macro_rules! either {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            Collector::Fit($c) => $body,
            Collector::Eval($c) => $body,
        }
    };
}

impl Collector {
    pub(super) fn phase(&self) -> Phase {
        match self {
            Collector::Fit(_) => Phase::Fit,
            Collector::Eval(_) => Phase::Evaluate,
        }
    }
    pub(super) fn round(&self) -> u64 {
        either!(self, c => c.plan().round)
    }
    pub(super) fn selected(&self) -> &[String] {
        either!(self, c => &c.plan().clients)
    }
    pub(super) fn pending(&self) -> Vec<String> {
        either!(self, c => c.pending())
    }
    pub(super) fn is_complete(&self) -> bool {
        either!(self, c => c.is_complete())
    }
    pub(super) fn record_sent(&mut self, id: &str, bytes: u64) {
        let _ = either!(self, c => c.record_sent(id, bytes));
    }
    pub(super) fn fail(&mut self, id: &str, why: &str) {
        let _ = either!(self, c => c.fail(id, why));
    }
}

/// The open round with what its tasks carry.
pub(super) struct Current {
    pub(super) collector: Collector,
    pub(super) payload: Arc<Payload>,
    pub(super) config: BTreeMap<String, proto::ConfigValue>,
    pub(super) deadline: Instant,
    pub(super) refused: usize,
    /// Set when uploads are compressed deltas.
    pub(super) decoding: Option<Arc<Decoding>>,
    /// Set when the round is securely aggregated.
    pub(super) secagg: Option<super::secagg::SecAggRound>,
}

impl Current {
    /// Clients the round (or, securely aggregated, its open stage) still waits for.
    pub(super) fn pending(&self) -> Vec<String> {
        match &self.secagg {
            Some(sa) => sa.pending.iter().cloned().collect(),
            None => self.collector.pending(),
        }
    }

    /// Fails a client the round waits for (dropped from a securely aggregated round).
    pub(super) fn fail(&mut self, id: &str, why: &str) {
        match &mut self.secagg {
            Some(sa) => sa.fail(id, why),
            None => self.collector.fail(id, why),
        }
    }
}

/// What the server knows of one client.
#[derive(Default)]
pub(super) struct ClientInfo {
    pub(super) last_seen: Option<Instant>,
    pub(super) polling: usize,
    /// Uploads in progress (a long upload is contact too).
    pub(super) uploading: usize,
    pub(super) away: bool,
    pub(super) told_finished: bool,
}

/// The mutable state, behind [`Shared::lock`].
#[derive(Default)]
pub(super) struct State {
    pub(super) clients: BTreeMap<String, ClientInfo>,
    pub(super) current: Option<Current>,
    pub(super) completed_rounds: u64,
    pub(super) finished: bool,
    pub(super) stopping: bool,
    pub(super) stats: ServerStats,
}

/// Settings and state shared by the handlers and the driver.
pub(super) struct Shared {
    pub(super) tokens: TokenStore,
    pub(super) state: Mutex<State>,
    pub(super) epoch: watch::Sender<u64>,
    pub(super) events: EventSink,
    pub(super) run_id: String,
    pub(super) model_spec_json: String,
    pub(super) total_rounds: u64,
    pub(super) max_chunk: u64,
    pub(super) max_update: u64,
    pub(super) liveness: Duration,
    /// The feature of this run that older clients lack (`compressed uploads`...), if any:
    /// then only clients of the current protocol version may register.
    pub(super) needs_current_protocol: Option<String>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked cannot leave the state half-written in a
        // way later code relies on, so a poisoned lock is taken over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn bump(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    pub(super) fn touch(&self, id: &str) {
        let mut st = self.lock();
        let c = st.clients.entry(id.to_string()).or_default();
        c.last_seen = Some(Instant::now());
        c.away = false;
    }

    /// How often clients are asked to say they are alive: four beats per `liveness`.
    pub(super) fn heartbeat_interval(&self) -> Duration {
        (self.liveness / 4).max(Duration::from_millis(50))
    }

    /// Fails the selected clients of the open round that have not been heard from for
    /// `liveness` (no poll, heartbeat or upload): they died or lost their network, and the
    /// round need not wait for its deadline. Returns their ids.
    pub(super) fn drop_silent(&self) -> Vec<String> {
        let now = Instant::now();
        let mut st = self.lock();
        let State {
            clients, current, ..
        } = &mut *st;
        let Some(cur) = current.as_mut() else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for id in cur.pending() {
            let Some(c) = clients.get_mut(&id) else {
                continue;
            };
            let silent = c.polling == 0
                && c.uploading == 0
                && c.last_seen
                    .is_some_and(|t| now.duration_since(t) >= self.liveness);
            if silent {
                let secs = c
                    .last_seen
                    .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
                cur.fail(&id, &format!("lost contact: nothing heard for {secs:.0} s"));
                c.away = true;
                gone.push(id);
            }
        }
        gone
    }

    pub(super) fn available(&self) -> Vec<String> {
        let now = Instant::now();
        let st = self.lock();
        st.clients
            .iter()
            .filter(|(_, c)| {
                c.polling > 0
                    || (!c.away
                        && c.last_seen
                            .is_some_and(|t| now.duration_since(t) < self.liveness))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn refuse(&self, id: &str, round: u64, kind: RefusalKind, status: Status) -> Status {
        warn!(
            client = id,
            round,
            kind = kind.name(),
            "refused: {}",
            status.message()
        );
        {
            let mut st = self.lock();
            *st.stats.refused.entry(kind).or_default() += 1;
            if let Some(cur) = st.current.as_mut() {
                cur.refused += 1;
            }
        }
        self.events.emit(Event::Refused {
            client_id: id.to_string(),
            round,
            kind: kind.name().to_string(),
            code: format!("{:?}", status.code()),
            reason: status.message().to_string(),
        });
        status
    }
}

/// Marks a client as polling while a task request is held open.
pub(super) struct PollGuard<'a> {
    shared: &'a Shared,
    id: String,
    pub(super) done: bool,
}

impl<'a> PollGuard<'a> {
    pub(super) fn new(shared: &'a Shared, id: &str) -> Self {
        {
            let mut st = shared.lock();
            let c = st.clients.entry(id.to_string()).or_default();
            c.polling += 1;
            c.last_seen = Some(Instant::now());
            c.away = false;
        }
        shared.bump();
        Self {
            shared,
            id: id.to_string(),
            done: false,
        }
    }
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(c) = st.clients.get_mut(&self.id) {
            c.polling = c.polling.saturating_sub(1);
            c.last_seen = Some(Instant::now());
            if !self.done {
                // The client hung up while waiting: do not sample it until it is back.
                c.away = true;
            }
        }
    }
}

/// Counts an upload in progress as contact with its client, for [`Shared::drop_silent`].
pub(super) struct UploadGuard<'a> {
    shared: &'a Shared,
    id: String,
}

impl<'a> UploadGuard<'a> {
    pub(super) fn new(shared: &'a Shared, id: &str) -> Self {
        shared.touch(id);
        if let Some(c) = shared.lock().clients.get_mut(id) {
            c.uploading += 1;
        }
        Self {
            shared,
            id: id.to_string(),
        }
    }
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(c) = st.clients.get_mut(&self.id) {
            c.uploading = c.uploading.saturating_sub(1);
            c.last_seen = Some(Instant::now());
        }
    }
}
