//! The Kubernetes node agent's view of the node (issue 11, under way): where
//! the kubelet puts each pod's cgroup. The API watches that will drive it are
//! not built yet; the file mode is unaffected.

pub mod cgroups;
