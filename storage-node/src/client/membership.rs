//! Asking a shard's leader for its membership, and changing it (see
//! [`crate::service::membership`]), through the client's call loop: redirects are
//! followed, also to a leader that is not in this client's config (a member
//! added later), whose address the redirect carries.

use std::time::Duration;

use raftshop_proto::store::{membership_reply, MembershipChange, MembershipReply, MembershipRequest, MembershipView};

use super::{Answer, ClientError, ShardClient};
use crate::types::NodeId;

impl ShardClient {
    /// The shard's membership as its leader sees it, with each member's
    /// replication progress.
    pub async fn membership(&self, deadline: Duration) -> Result<MembershipView, ClientError> {
        let send = |mut client: super::StoreClient<_>| async move { client.membership(MembershipRequest {}).await };
        self.call_from(None, deadline, false, send, membership_answer).await
    }

    /// Carries out `change` through the leader; the membership after it.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        deadline: Duration,
    ) -> Result<MembershipView, ClientError> {
        let send = |mut client: super::StoreClient<_>| {
            let change = change.clone();
            async move { client.change_membership(change).await }
        };
        self.call_from(None, deadline, true, send, membership_answer).await
    }
}

/// Reads a membership reply of `node`: the view, or a redirect.
fn membership_answer(node: NodeId, reply: MembershipReply) -> Answer<MembershipView> {
    match reply.outcome {
        Some(membership_reply::Outcome::Membership(view)) => Answer::Done(Ok(view)),
        Some(membership_reply::Outcome::NotLeader(redirect)) => Answer::Redirect(redirect),
        None => Answer::Done(Err(ClientError::Protocol { node, detail: "an empty membership reply".into() })),
    }
}
