//! What a runner process may do through the runners' API, and the credentials that say so.
//!
//! The server's runner key (`runner.key`) grants everything and stays with the server and its
//! operator. A runner is handed only what its work needs, derived from that key with HMAC, so
//! the server keeps no table of them and they survive a restart:
//! - a lane credential (`wrl.<lane>.<mac>`), for the workers the server starts: claim jobs of
//!   that lane and turn a claim the queue confirms into a claim credential;
//! - a claim credential (`wrc.<job>.<delivery>.<mac>`), for one delivery of one job (all a
//!   dedicated runner, a VM or a Kubernetes pod gets): start, heartbeat, finish and ack that
//!   job, and fetch that job's module, for as long as the job has not ended.
//!
//! A runner that is taken over (a sandbox escape in a pod, say) thus reaches its own job and
//! nothing else: no other job's input, secrets or result, no other tenant's module.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use wafer_core::Secret;
use wafer_core::{JobId, Lane};

/// What a credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The runner key: everything.
    All,
    /// A worker of one lane.
    Lane(Lane),
    /// One delivery of one job.
    Claim {
        /// The job.
        job: JobId,
        /// Its delivery.
        delivery: u32,
    },
}

/// The runner key and the credentials derived from it.
pub struct RunnerKeys {
    key: Secret,
    key_hash: [u8; 32],
    mac: Hmac<Sha256>,
}

impl RunnerKeys {
    /// Keys derived from the runner key `key`.
    pub fn new(key: Secret) -> Self {
        use sha2::Digest as _;
        let mac = Hmac::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key");
        let key_hash = Sha256::digest(key.expose().as_bytes()).into();
        Self { key, key_hash, mac }
    }

    /// The runner key itself, which grants everything.
    pub fn key(&self) -> &Secret {
        &self.key
    }

    fn sign(&self, what: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(what.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn verify(&self, what: &str, tag: &str) -> bool {
        let Ok(tag) = hex::decode(tag) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(what.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }

    fn lane_message(lane: Lane) -> String {
        format!("wafer-lane\0{}", lane.as_str())
    }

    fn claim_message(job: &JobId, delivery: u32) -> String {
        format!("wafer-claim\0{}\0{delivery}", job.as_str())
    }

    /// The credential of a worker of `lane`.
    pub fn lane(&self, lane: Lane) -> Secret {
        Secret::new(format!(
            "wrl.{}.{}",
            lane.as_str(),
            self.sign(&Self::lane_message(lane))
        ))
    }

    /// The credential of delivery `delivery` of `job`.
    pub fn claim(&self, job: &JobId, delivery: u32) -> Secret {
        Secret::new(format!(
            "wrc.{}.{delivery}.{}",
            job.as_str(),
            self.sign(&Self::claim_message(job, delivery))
        ))
    }

    /// What `presented` grants; None for anything that is not a credential of this key.
    /// Takes the same time whatever part of a forged credential is wrong.
    pub fn check(&self, presented: &str) -> Option<Grant> {
        use sha2::Digest as _;
        let parts: Vec<&str> = presented.split('.').collect();
        match parts.as_slice() {
            ["wrl", lane, tag] => {
                let lane = Lane::parse(lane)?;
                self.verify(&Self::lane_message(lane), tag)
                    .then_some(Grant::Lane(lane))
            }
            ["wrc", job, delivery, tag] => {
                let job = JobId::parse(job)?;
                let delivery: u32 = delivery.parse().ok()?;
                self.verify(&Self::claim_message(&job, delivery), tag)
                    .then_some(Grant::Claim { job, delivery })
            }
            // Compare hashes, so the time taken says nothing about the key.
            _ => {
                let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                (hash == self.key_hash).then_some(Grant::All)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_grant_what_they_were_made_for_and_nothing_when_altered() {
        let keys = RunnerKeys::new(Secret::new("wrn_a_runner_key_of_some_length_0001".into()));
        let other = RunnerKeys::new(Secret::new("wrn_another_runner_key_of_length_02".into()));
        assert_eq!(
            keys.check("wrn_a_runner_key_of_some_length_0001"),
            Some(Grant::All)
        );
        let lane = keys.lane(Lane::Default);
        assert_eq!(keys.check(lane.expose()), Some(Grant::Lane(Lane::Default)));
        assert_eq!(other.check(lane.expose()), None, "another key's");
        let moved = lane.expose().replace("wrl.default.", "wrl.long.");
        assert_eq!(
            keys.check(&moved),
            None,
            "a lane credential moved to a lane"
        );
        let job = JobId::generate();
        let claim = keys.claim(&job, 2);
        assert_eq!(
            keys.check(claim.expose()),
            Some(Grant::Claim {
                job: job.clone(),
                delivery: 2
            })
        );
        let again = claim.expose().replace(".2.", ".3.");
        assert_eq!(keys.check(&again), None, "another delivery");
        let elsewhere = claim
            .expose()
            .replace(job.as_str(), JobId::generate().as_str());
        assert_eq!(keys.check(&elsewhere), None, "another job");
        for junk in ["", "wrc", "wrl.default", "wrc.x.1.00", "wrl.default.zz"] {
            assert_eq!(keys.check(junk), None, "{junk:?}");
        }
    }
}
