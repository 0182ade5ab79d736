//! Every member's view at once: what the status page and `cluster status --all` show, with the
//! members whose state digest differs from the others' at the same applied index flagged.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::NodeInner;
use crate::pb;
use crate::pb::api_client::ApiClient;

/// How long a member has to answer before it is shown as unreachable.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// One member, as it answered (or why it did not).
#[derive(Debug)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub status: Result<pb::ClusterStatusResponse, String>,
    pub plugins: pb::ListPluginsResponse,
    /// Its view of the shadow run asked about, if one was.
    pub shadow: Option<pb::ShadowStatusResponse>,
}

impl Member {
    pub fn to_pb(&self) -> pb::MemberView {
        pb::MemberView {
            id: self.id,
            addr: self.addr.clone(),
            error: self.status.as_ref().err().cloned().unwrap_or_default(),
            status: self.status.as_ref().ok().cloned(),
            plugins: Some(self.plugins.clone()),
            shadow: self.shadow.clone(),
        }
    }
}

/// The members whose digest differs from the one most members report at the same applied index,
/// with why. Members are `(id, digest index, digest)`.
pub fn diverged<'a>(members: impl IntoIterator<Item = (u64, u64, &'a str)>) -> BTreeMap<u64, String> {
    let mut by_index: BTreeMap<u64, Vec<(u64, &str)>> = BTreeMap::new();
    for (id, index, digest) in members {
        by_index.entry(index).or_default().push((id, digest));
    }
    let mut flagged = BTreeMap::new();
    for (index, digests) in by_index {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, digest) in &digests {
            *counts.entry(digest).or_default() += 1;
        }
        let Some((common, _)) = counts.iter().max_by_key(|(_, n)| **n) else {
            continue;
        };
        for (id, digest) in &digests {
            if digest != common {
                flagged.insert(*id, format!("digest differs from the others' at index {index}"));
            }
        }
    }
    flagged
}

impl NodeInner {
    /// Asks every member (this node included, directly) for its status and plugins, and its view
    /// of the `shadow` plugin's shadow run when one is named, in parallel.
    pub async fn members(&self, shadow: Option<&str>) -> Vec<Member> {
        let own = self.status();
        let own = &own;
        let asks = own.nodes.iter().map(|n| async move {
            if n.id == self.id {
                return Member {
                    id: n.id,
                    addr: n.addr.clone(),
                    status: Ok(own.clone()),
                    plugins: self.list_plugins(),
                    shadow: shadow.map(|name| self.shadow_status(name)),
                };
            }
            let ask = async {
                let channel = self.network.channel(n.id, &n.addr).map_err(|e| e.to_string())?;
                let mut api = ApiClient::new(channel);
                let status = api
                    .cluster_status(pb::ClusterStatusRequest {})
                    .await
                    .map_err(|e| e.message().to_string())?
                    .into_inner();
                let plugins = api
                    .list_plugins(pb::ListPluginsRequest {})
                    .await
                    .map_err(|e| e.message().to_string())?
                    .into_inner();
                let shadow = match shadow {
                    Some(name) => {
                        let request = pb::ShadowStatusRequest { name: name.to_string() };
                        Some(
                            api.shadow_status(request)
                                .await
                                .map_err(|e| e.message().to_string())?
                                .into_inner(),
                        )
                    }
                    None => None,
                };
                Ok::<_, String>((status, plugins, shadow))
            };
            let answer = tokio::time::timeout(MEMBER_TIMEOUT, ask)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {MEMBER_TIMEOUT:?}")));
            let (status, plugins, shadow) = match answer {
                Ok((status, plugins, shadow)) => (Ok(status), plugins, shadow),
                Err(e) => (Err(e), pb::ListPluginsResponse::default(), None),
            };
            Member {
                id: n.id,
                addr: n.addr.clone(),
                status,
                plugins,
                shadow,
            }
        });
        futures::future::join_all(asks).await
    }

    /// This node's view of `name`'s shadow run.
    pub fn shadow_status(&self, name: &str) -> pb::ShadowStatusResponse {
        pb::ShadowStatusResponse {
            node: self.id,
            applied_index: self.shared.applied_index(),
            shadow: self.shared.shadow(name).map(|s| s.record()),
        }
    }
}

impl NodeInner {
    /// This node's checkpoints.
    pub fn checkpoints(&self) -> pb::CheckpointsResponse {
        pb::CheckpointsResponse {
            node: self.id,
            checkpoints: self
                .shared
                .checkpoints()
                .into_iter()
                .map(|(index, digest)| pb::Checkpoint { index, digest })
                .collect(),
        }
    }

    /// Asks every member for its checkpoints and compares the digests at the highest index the
    /// members that answered all kept. A divergence is logged here too.
    pub async fn check_digests(&self) -> pb::CheckDigestsResponse {
        let own = self.status();
        let own = &own;
        let asks = own.nodes.iter().map(|n| async move {
            if n.id == self.id {
                return (n.id, Ok(self.checkpoints().checkpoints));
            }
            let ask = async {
                let channel = self.network.channel(n.id, &n.addr).map_err(|e| e.to_string())?;
                let resp = ApiClient::new(channel)
                    .checkpoints(pb::CheckpointsRequest {})
                    .await
                    .map_err(|e| e.message().to_string())?;
                Ok::<_, String>(resp.into_inner().checkpoints)
            };
            let answer = tokio::time::timeout(MEMBER_TIMEOUT, ask)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {MEMBER_TIMEOUT:?}")));
            (n.id, answer)
        });
        let answers = futures::future::join_all(asks).await;
        let index = answers
            .iter()
            .filter_map(|(_, a)| a.as_ref().ok())
            .map(|kept| kept.iter().map(|c| c.index).collect::<std::collections::BTreeSet<_>>())
            .reduce(|all, kept| all.intersection(&kept).copied().collect())
            .and_then(|common| common.last().copied());
        let members: Vec<pb::MemberDigest> = answers
            .iter()
            .map(|(id, answer)| match (answer, index) {
                (Err(e), _) => pb::MemberDigest {
                    id: *id,
                    error: e.clone(),
                    ..Default::default()
                },
                (Ok(kept), Some(index)) => pb::MemberDigest {
                    id: *id,
                    digest: kept
                        .iter()
                        .find(|c| c.index == index)
                        .map(|c| c.digest.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                },
                (Ok(_), None) => pb::MemberDigest {
                    id: *id,
                    error: "no checkpoint in common with the others".into(),
                    ..Default::default()
                },
            })
            .collect();
        let diverged: Vec<u64> = match index {
            Some(index) => diverged(
                members
                    .iter()
                    .filter(|m| m.error.is_empty())
                    .map(|m| (m.id, index, m.digest.as_str())),
            )
            .into_keys()
            .collect(),
            None => Vec::new(),
        };
        if let (Some(index), false) = (index, diverged.is_empty()) {
            tracing::error!(
                node = self.id,
                index,
                diverged = ?diverged,
                "state digests diverge: these members applied the same log to a different state"
            );
        }
        pb::CheckDigestsResponse {
            index,
            members,
            diverged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_unlike_the_others_at_the_same_index_is_flagged_and_other_indexes_are_not_compared() {
        let flagged = diverged([(1, 10, "aa"), (2, 10, "aa"), (3, 10, "bb"), (4, 9, "cc")]);
        assert_eq!(flagged.keys().copied().collect::<Vec<_>>(), [3]);
        assert!(diverged([(1, 10, "aa"), (2, 11, "bb")]).is_empty());
    }
}
