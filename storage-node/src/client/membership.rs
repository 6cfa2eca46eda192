//! Asking a shard's leader for its membership, and changing it (see
//! [`crate::membership`]): the calls follow redirects, also to a leader
//! that is not in this client's config (a member added later), whose
//! address the redirect carries.

use std::time::Duration;

use raftshop_proto::store::store_client::StoreClient;
use raftshop_proto::store::{membership_reply, MembershipChange, MembershipReply, MembershipRequest, MembershipView};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{ClientError, ShardClient, ATTEMPT_TIMEOUT, NO_LEADER_BACKOFF};
use crate::types::NodeId;

impl ShardClient {
    /// The shard's membership as its leader sees it, with each member's
    /// replication progress.
    pub async fn membership(&self, deadline: Duration) -> Result<MembershipView, ClientError> {
        self.ask_leader(deadline, |mut client| async move { client.membership(MembershipRequest {}).await }).await
    }

    /// Carries out `change` through the leader; the membership after it.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        deadline: Duration,
    ) -> Result<MembershipView, ClientError> {
        self.ask_leader(deadline, |mut client| {
            let change = change.clone();
            async move { client.change_membership(change).await }
        })
        .await
    }

    /// Sends `send` to the leader, following redirects until `deadline`.
    async fn ask_leader<F, Fut>(&self, deadline: Duration, send: F) -> Result<MembershipView, ClientError>
    where
        F: Fn(StoreClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<MembershipReply>, tonic::Status>>,
    {
        let give_up = Instant::now() + deadline;
        let mut target: (NodeId, Channel) = {
            let id = self.first_target();
            (id, self.channel_to(id).expect("the first target is reachable"))
        };
        let mut attempts = 0;
        let mut last_error = String::from("no attempt made");
        while Instant::now() < give_up {
            attempts += 1;
            let budget = ATTEMPT_TIMEOUT.min(give_up - Instant::now());
            let answer = tokio::time::timeout(budget, send(StoreClient::new(target.1.clone()))).await;
            match answer.map(|reply| reply.map(|r| r.into_inner().outcome)) {
                Ok(Ok(Some(membership_reply::Outcome::Membership(view)))) => return Ok(view),
                Ok(Ok(Some(membership_reply::Outcome::NotLeader(redirect)))) => {
                    last_error = format!("node {} is not the leader", target.0);
                    target = match redirect.leader_id.filter(|id| *id != target.0) {
                        Some(id) if self.knows(id, &redirect.leader_addr) => {
                            (id, self.channel_to(id).expect("a known node has a channel"))
                        }
                        _ => {
                            tokio::time::sleep(NO_LEADER_BACKOFF).await;
                            self.next_target(target.0)
                        }
                    };
                }
                Ok(Ok(None)) => {
                    return Err(ClientError::Protocol { node: target.0, detail: "an empty membership reply".into() })
                }
                Ok(Err(status)) if refused(&status) => {
                    return Err(ClientError::Refused { node: target.0, message: status.message().to_owned() })
                }
                Ok(Err(status)) => {
                    last_error = format!("node {}: {}", target.0, status.message());
                    tokio::time::sleep(NO_LEADER_BACKOFF).await;
                    target = self.next_target(target.0);
                }
                Err(_) => {
                    last_error = format!("node {} did not answer within {budget:?}", target.0);
                    target = self.next_target(target.0);
                }
            }
        }
        Err(ClientError::Unavailable { shard: self.shard, attempts, last_error, maybe_applied: true })
    }

    /// The configured member after `node`, with its channel.
    fn next_target(&self, node: NodeId) -> (NodeId, Channel) {
        let next = self.next_member(node);
        (next, self.members[&next].clone())
    }
}

/// A refusal of the change itself: asking again will not help.
fn refused(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition)
}
