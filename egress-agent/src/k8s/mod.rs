//! Kubernetes mode: this node's pods and Istio's resources from the API server
//! ([`watch`]), each pod's cgroup as the kubelet lays it out ([`cgroups`]), and
//! which pods are enforced, how ([`pods`]). The agent's loop feeds what they
//! give to the same store, compile and sync as the file mode.

pub mod cgroups;
pub mod pods;
pub mod watch;
