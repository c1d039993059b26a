//! The SuperNode lifecycle, as flwr 1.42's own node runs it: register (unless the key is
//! pre-registered), activate, send heartbeats, pull messages and their objects, confirm,
//! reply (push the message, then the objects the SuperLink still needs), and on shutdown
//! deactivate and unregister.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::auth::NodeKey;
use crate::error::{FlowerError, Result};
use crate::fleet::{FleetClient, Transport};
use crate::proto;
use crate::records::{tree_ids, Inflater, Message, RecordDict};
use fedprompt_io::signals::StopSignals;

/// Flower's heartbeat interval announced to the SuperLink (seconds).
pub const HEARTBEAT_INTERVAL: f64 = 30.0;
/// Flower's error code for an exception raised by the client app.
pub const CLIENT_APP_RAISED_EXCEPTION: i64 = 2;

/// What a node does with one message.
pub trait MessageHandler {
    /// The reply's content, or an error `(code, reason)` sent back as an error reply.
    fn handle(&mut self, message: &Message) -> std::result::Result<RecordDict, (i64, String)>;
}

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// How to reach the SuperLink.
    pub transport: Transport,
    /// Private key registered with the SuperLink (`flwr supernode register`); without it the
    /// node generates a key and registers itself.
    pub auth_key: Option<PathBuf>,
    /// Pause between polls while idle (Flower's node: 3 s).
    pub poll_interval: Duration,
    /// Give up reconnecting after this long without reaching the SuperLink.
    pub reconnect_for: Duration,
    /// Stop after handling this many messages (tests, scripted runs).
    pub max_messages: Option<usize>,
}

impl NodeConfig {
    /// Defaults for a transport.
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            auth_key: None,
            poll_interval: Duration::from_secs(3),
            reconnect_for: Duration::from_secs(300),
            max_messages: None,
        }
    }
}

/// What a node did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSummary {
    /// The id the SuperLink gave this node.
    pub node_id: u64,
    /// Messages answered, by type.
    pub handled: HashMap<String, usize>,
    /// Error replies sent.
    pub error_replies: usize,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The metadata of a reply to `incoming`, as Flower's `Message(content, reply_to=...)` builds it.
pub fn reply_metadata(incoming: &proto::Metadata) -> proto::Metadata {
    let now = now_secs();
    proto::Metadata {
        run_id: incoming.run_id,
        message_id: String::new(),
        src_node_id: incoming.dst_node_id,
        dst_node_id: incoming.src_node_id,
        reply_to_message_id: incoming.message_id.clone(),
        group_id: incoming.group_id.clone(),
        ttl: incoming.created_at + incoming.ttl - now,
        message_type: incoming.message_type.clone(),
        created_at: now,
        src_task_id: incoming.dst_task_id,
        dst_task_id: incoming.src_task_id,
    }
}

/// Retries a call while it fails transiently, with exponential backoff (0.5 s … 30 s),
/// for at most `budget`.
async fn retry<T, F, Fut>(what: &str, budget: Duration, stop: &AtomicBool, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e)
                if e.is_transient() && start.elapsed() < budget && !stop.load(Ordering::SeqCst) =>
            {
                tracing::warn!("{what}: {e}; retrying in {:.1} s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps `d`, waking early when `stop` is set.
async fn nap(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(100))).await;
    }
}

/// Runs a node until `stop` is set (Ctrl-C), `max_messages` are handled, or a fatal error.
/// The node always tries to deactivate (and, if it registered itself, unregister) on the way out.
pub async fn run(
    cfg: &NodeConfig,
    handler: &mut dyn MessageHandler,
    stop: Arc<AtomicBool>,
) -> Result<NodeSummary> {
    let (key, self_registered) = match &cfg.auth_key {
        Some(p) => (NodeKey::from_pem_file(p)?, false),
        None => (NodeKey::generate()?, true),
    };
    let client = FleetClient::new(&cfg.transport, key)?;
    let mut summary = NodeSummary::default();
    let mut rejoins = 0;
    loop {
        let node_id = connect(cfg, &client, self_registered, &stop).await?;
        summary.node_id = node_id;
        // Ends this session: Ctrl-C, or a heartbeat that failed for good.
        let session = Arc::new(AtomicBool::new(false));
        let fatal: Arc<std::sync::Mutex<Option<FlowerError>>> = Arc::default();
        let hb = tokio::spawn(heartbeats(
            client.clone(),
            node_id,
            stop.clone(),
            session.clone(),
            fatal.clone(),
        ));
        let outcome = serve(cfg, &client, node_id, handler, &session, &mut summary).await;
        session.store(true, Ordering::SeqCst);
        let _ = hb.await;
        let hb_error = fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut error = outcome.err().or(hb_error);
        // Ctrl-C while the SuperLink was unreachable: the user asked to leave, not an error.
        if stop.load(Ordering::SeqCst) && error.as_ref().is_some_and(FlowerError::is_transient) {
            error = None;
        }
        // A SuperLink restarted without its database has forgotten a self-registered node:
        // register and activate again (a pre-registered key is the operator's business).
        let forgotten = matches!(
            error,
            Some(FlowerError::Forgotten(_)) | Some(FlowerError::Unauthenticated { .. })
        );
        if forgotten && self_registered && rejoins < 5 && !stop.load(Ordering::SeqCst) {
            rejoins += 1;
            tracing::warn!(
                "{}; joining again ({rejoins}/5)",
                error.map(|e| e.to_string()).unwrap_or_default()
            );
            continue;
        }
        leave(&client, node_id, self_registered).await;
        return match error {
            Some(e) => Err(e),
            None => Ok(summary),
        };
    }
}

/// Registers (self-generated keys only) and activates; returns the node id.
async fn connect(
    cfg: &NodeConfig,
    client: &FleetClient,
    self_registered: bool,
    stop: &AtomicBool,
) -> Result<u64> {
    let budget = cfg.reconnect_for;
    if self_registered {
        retry("RegisterNode", budget, stop, || client.register_node()).await?;
    }
    let node_id = retry("ActivateNode", budget, stop, || {
        client.activate_node(HEARTBEAT_INTERVAL)
    })
    .await
    .map_err(|e| match e {
        // flwr 1.42 answers an unknown pre-registered key with 412 / code 2004.
        FlowerError::Refused {
            status: 412,
            detail,
            ..
        } if !self_registered => FlowerError::Unauthenticated {
            rpc: "activate-node",
            detail: format!("{detail} (is this node's public key registered?)"),
        },
        e => e,
    })?;
    tracing::info!(
        node_id,
        url = client.base_url(),
        "connected to the Flower SuperLink"
    );
    Ok(node_id)
}

/// Deactivates, and unregisters a self-registered node; failures are only logged.
async fn leave(client: &FleetClient, node_id: u64, self_registered: bool) {
    if let Err(e) = client.deactivate_node(node_id).await {
        tracing::warn!("DeactivateNode: {e}");
    }
    if self_registered {
        if let Err(e) = client.unregister_node(node_id).await {
            tracing::warn!("UnregisterNode: {e}");
        }
    }
    tracing::info!(node_id, "left the federation");
}

/// Heartbeats every 17.5–22.5 s (Flower drops a node after 60 s of silence) until `session`
/// ends; Ctrl-C (`stop`) ends the session. A refused heartbeat ends it with an error.
async fn heartbeats(
    client: FleetClient,
    node_id: u64,
    stop: Arc<AtomicBool>,
    session: Arc<AtomicBool>,
    fatal: Arc<std::sync::Mutex<Option<FlowerError>>>,
) {
    let mut next = Instant::now() + Duration::from_secs_f64(17.5 + rand::random::<f64>() * 5.0);
    while !session.load(Ordering::SeqCst) {
        if stop.load(Ordering::SeqCst) {
            session.store(true, Ordering::SeqCst);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + Duration::from_secs_f64(17.5 + rand::random::<f64>() * 5.0);
        let failure = match client.heartbeat(node_id, HEARTBEAT_INTERVAL).await {
            Ok(true) => None,
            Ok(false) => Some(FlowerError::Forgotten("its heartbeat was refused".into())),
            Err(e) if e.is_transient() => {
                tracing::warn!("heartbeat: {e}");
                None
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            session.store(true, Ordering::SeqCst);
        }
    }
}

/// Pulls and answers messages until `stop` (the session's end) or an error.
async fn serve(
    cfg: &NodeConfig,
    client: &FleetClient,
    node_id: u64,
    handler: &mut dyn MessageHandler,
    stop: &AtomicBool,
    summary: &mut NodeSummary,
) -> Result<()> {
    let budget = cfg.reconnect_for;
    let mut runs_seen: Vec<u64> = Vec::new();
    let mut handled = 0usize;
    while !stop.load(Ordering::SeqCst) {
        if cfg.max_messages.is_some_and(|m| handled >= m) {
            break;
        }
        let pulled = retry("PullMessages", budget, stop, || {
            client.pull_messages(node_id)
        })
        .await?;
        let (Some(pm), Some(tree)) = (
            pulled.messages_list.into_iter().next(),
            pulled.message_object_trees.into_iter().next(),
        ) else {
            nap(cfg.poll_interval, stop).await;
            continue;
        };
        let meta = pm.metadata.ok_or(FlowerError::Decode {
            rpc: "pull-messages",
            msg: "a message without metadata".into(),
        })?;
        let run_id = meta.run_id;
        if !runs_seen.contains(&run_id) {
            let run = retry("GetRun", budget, stop, || client.get_run(node_id, run_id)).await?;
            tracing::info!(run_id, fab_id = %run.fab_id, fab_version = %run.fab_version, "new run");
            runs_seen.push(run_id);
        }
        let started = Instant::now();
        // Pull every object of the message's tree, waiting for those not yet available.
        let mut ids = Vec::new();
        tree_ids(&tree, &mut ids);
        let mut objects: HashMap<String, Vec<u8>> = HashMap::with_capacity(ids.len());
        for id in &ids {
            let wait_until = Instant::now() + Duration::from_secs(60);
            loop {
                let got = retry("PullObject", budget, stop, || {
                    client.pull_object(node_id, run_id, id)
                })
                .await?;
                match got {
                    Some(bytes) => {
                        objects.insert(id.clone(), bytes);
                        break;
                    }
                    None if Instant::now() < wait_until => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    None => {
                        return Err(FlowerError::object(id, "still unavailable after 60 s"));
                    }
                }
            }
        }
        let inflated =
            Inflater::new(&objects).and_then(|i| i.message(&meta.message_id, meta.clone()));
        retry("ConfirmMessageReceived", budget, stop, || {
            client.confirm_received(node_id, run_id, &meta.message_id)
        })
        .await?;
        let result = match inflated {
            Ok(msg) => {
                tracing::info!(
                    message_type = %meta.message_type,
                    group = %meta.group_id,
                    "message received"
                );
                tokio::task::block_in_place(|| handler.handle(&msg))
            }
            Err(e) => {
                tracing::error!("refusing a malformed message: {e}");
                Err((CLIENT_APP_RAISED_EXCEPTION, format!("fedprompt node: {e}")))
            }
        };
        let mut reply = Message {
            metadata: reply_metadata(&meta),
            content: None,
            error: None,
        };
        match result {
            Ok(rd) => {
                reply.content = Some(rd);
                *summary
                    .handled
                    .entry(meta.message_type.clone())
                    .or_default() += 1;
            }
            Err((code, reason)) => {
                tracing::warn!("error reply: {reason}");
                reply.error = Some(proto::Error { code, reason });
                summary.error_replies += 1;
            }
        }
        handled += 1;
        if reply.metadata.ttl <= 0.0 {
            tracing::warn!("the message expired while it was being handled; no reply sent");
            continue;
        }
        let deflated = reply.deflate();
        let runtime = started.elapsed().as_secs_f64();
        let pushed = retry("PushMessages", budget, stop, || {
            client.push_messages(
                node_id,
                reply.to_push_proto(),
                deflated.tree.clone(),
                runtime,
            )
        })
        .await?;
        for (id, bytes) in &deflated.objects {
            if pushed.objects_to_push.contains(id) {
                retry("PushObject", budget, stop, || {
                    client.push_object(node_id, run_id, &pushed.session_id, id, bytes.clone())
                })
                .await?;
            }
        }
        tracing::info!(message_type = %meta.message_type, seconds = runtime, "reply sent");
    }
    Ok(())
}

/// Runs a node on its own Tokio runtime until Ctrl-C or SIGTERM (the first one lets the node
/// finish the message at hand and leave cleanly; a second one exits at once).
pub fn run_blocking(cfg: &NodeConfig, handler: &mut dyn MessageHandler) -> Result<NodeSummary> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| FlowerError::Config(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let mut signals = StopSignals::install();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (name, _) = signals.next().await;
                tracing::warn!("{name}: finishing the message at hand, then leaving the federation ({name} again to quit now)");
                stop.store(true, Ordering::SeqCst);
                let (_, status) = signals.next().await;
                std::process::exit(status);
            });
        }
        run(cfg, handler, stop).await
    })
}
