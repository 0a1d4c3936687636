//! Planned shards into flight: taking them from the plan while slots and the staging budget
//! allow, storing the plan in segments (before the shards run, for a watch over a topic),
//! skipping shards earlier runs committed, and staging each taken shard's inputs.

use super::{Coordinator, InFlight, Msg, PLAN_SEGMENT, STAGING_BUDGET};
use crate::events::Event;
use crate::manifest::ShardStatus;
use crate::source::{PlanError, Planned, Shard};
use crate::stage::{self, Slot, Staged};
use tokio::sync::mpsc;

impl Coordinator {
    /// Whether the next planned shard may be taken: while planning goes on, nothing stops
    /// the run, a slot is free and the staging budget allows (always when nothing is in flight).
    pub(super) fn can_take_shard(&self) -> bool {
        !self.plan_done
            && !self.stopping
            && self.fatal.is_none()
            && self.slots.as_ref().is_none_or(|free| !free.is_empty())
            && (self.in_flight.is_empty() || self.bytes_in_flight < STAGING_BUDGET)
    }

    /// The shard just planned, and (when shards are stored before they run) those that
    /// wait behind it, up to the free slots: stored together, as one plan segment.
    pub(super) fn with_ready_shards(
        &self,
        first: Option<Result<Planned, PlanError>>,
        shards: &mut mpsc::Receiver<Result<Planned, PlanError>>,
    ) -> Vec<Option<Result<Planned, PlanError>>> {
        let mut batch = vec![first];
        if self.plans_first() {
            let room = self.slots.as_ref().map_or(self.capacity, Vec::len);
            while batch.len() < room {
                match shards.try_recv() {
                    Ok(planned) => batch.push(Some(planned)),
                    Err(_) => break,
                }
            }
        }
        batch
    }

    pub(super) fn plans_first(&self) -> bool {
        self.watch.as_ref().is_some_and(|watch| watch.plan_first)
    }

    pub(super) async fn on_planned_batch(&mut self, batch: Vec<Option<Result<Planned, PlanError>>>) {
        if self.plans_first() {
            let shards: Vec<Shard> = batch
                .iter()
                .filter_map(|planned| match planned {
                    Some(Ok(Planned::Shard(shard))) => Some(shard.clone()),
                    _ => None,
                })
                .collect();
            if !shards.is_empty() {
                let segment = self.plan_segment;
                self.plan_segment += 1;
                if let Err(e) = self.manifest.write_plan_segment(segment, &shards).await {
                    self.fatal = Some(format!("storing the plan: {e}"));
                    return;
                }
            }
        }
        for planned in batch {
            self.on_planned(planned).await;
        }
    }

    pub(super) async fn on_planned(&mut self, planned: Option<Result<Planned, PlanError>>) {
        match planned {
            Some(Ok(Planned::Shard(shard))) => {
                self.planned += 1;
                self.last_shard = self.last_shard.max(Some(shard.id));
                if self.write_job_document {
                    // job.json goes first: a manifest never exists without its job.
                    self.write_job_document = false;
                    if let Err(e) = self.manifest.write_job(&self.document).await {
                        self.fatal = Some(format!("writing job.json: {e}"));
                        return;
                    }
                }
                if self.slots.is_none() {
                    let slots = match self.executor.stages_locally() {
                        true => stage::make_slots(&self.staging_root, self.capacity, STAGING_BUDGET).await,
                        false => Ok(stage::remote_slots(&self.staging_root, self.capacity)),
                    };
                    match slots {
                        Ok(slots) => self.slots = Some(slots),
                        Err(e) => {
                            self.fatal = Some(e.to_string());
                            return;
                        }
                    }
                }
                if self.record_plan && !self.plans_first() {
                    self.plan_buffer.push(shard.clone());
                    if self.plan_buffer.len() >= PLAN_SEGMENT && self.watch.is_none() {
                        self.store_plan_segment();
                    }
                }
                self.dispatch(shard);
            }
            Some(Ok(Planned::Done(totals))) => {
                self.plan_done = true;
                self.stats.plan_ms = Some(totals.elapsed_ms);
                if self.record_plan && self.watch.is_none() {
                    self.store_plan_segment();
                }
                self.plan_totals = Some(totals);
            }
            Some(Err(error)) => {
                self.plan_done = true;
                self.stats.plan_error = Some(error.to_string());
                self.plan_failure = Some(error);
            }
            None => {
                self.plan_done = true;
                if self.plan_totals.is_none() && self.stats.plan_error.is_none() {
                    self.stats.plan_error = Some("planning stopped unexpectedly".into());
                }
            }
        }
    }

    pub(super) fn store_plan_segment(&mut self) {
        let shards = std::mem::take(&mut self.plan_buffer);
        if shards.is_empty() {
            return;
        }
        let segment = self.plan_segment;
        self.plan_segment += 1;
        let manifest = self.manifest.clone();
        self.plan_writes.push(tokio::spawn(async move { manifest.write_plan_segment(segment, &shards).await }));
    }

    pub(super) fn dispatch(&mut self, shard: Shard) {
        let fingerprint = shard.fingerprint();
        let prior = self.prior.latest.get(&shard.id);
        if let Some(record) = prior {
            if record.status == ShardStatus::Ok {
                if record.fingerprint == fingerprint {
                    if let Some(listener) = &self.on_commit {
                        listener.committed(std::slice::from_ref(&shard));
                    }
                    self.stats.shards_skipped += 1;
                    self.events.emit(Event::Skipped);
                    self.records.insert(shard.id, record.clone());
                    return;
                }
                self.events.emit(Event::Note(format!(
                    "shard {:05} changed since it was committed (its inputs differ); running it again",
                    shard.id
                )));
            }
        }
        let prior_attempts = prior.filter(|r| r.fingerprint == fingerprint).map(|r| r.attempts).unwrap_or(0);
        if let (Some(watch), crate::source::ShardInput::Objects { objects }) = (&mut self.watch, &shard.input) {
            let mut earlier = Vec::new();
            for object in objects {
                let takers = watch.object_shards.entry(object.key.clone()).or_default();
                earlier.extend(takers.iter().copied().filter(|&taker| taker != shard.id));
                if !takers.contains(&shard.id) {
                    takers.push(shard.id);
                }
            }
            if !earlier.is_empty() {
                self.supersedes.insert(shard.id, earlier);
            }
        }
        let slot = self.slots.as_mut().and_then(|free| free.pop()).expect("dispatch only with a free slot");
        let id = shard.id;
        self.bytes_in_flight += shard.bytes_in();
        self.in_flight.insert(
            id,
            InFlight {
                shard: shard.clone(),
                fingerprint,
                prior_attempts,
                attempts: 0,
                failures: 0,
                slot: slot.clone(),
                staged: None,
                history: Vec::new(),
                running: Vec::new(),
                won: false,
                parked: None,
                cancel: self.shutdown.hard.child_token(),
            },
        );
        self.spawn_staging(id, shard, slot);
    }

    pub(super) fn spawn_staging(&self, id: u64, shard: Shard, mut slot: Slot) {
        let tx = self.msg_tx.clone();
        if !self.executor.stages_locally() {
            let _ = tx.send(Msg::Staged { shard: id, result: Ok(Staged::default()), slot });
            return;
        }
        let source = self.source.clone();
        tokio::spawn(async move {
            let result = stage::stage(&source, &shard, &mut slot).await;
            let _ = tx.send(Msg::Staged { shard: id, result, slot });
        });
    }
}
