package control

import (
	"net/http"
	"slices"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// handleCluster says who leads the control plane (the identity of the
// server whose scheduler and controllers run) and which etcd members serve
// it: what an operator checks after losing a server.
func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	p, err := s.auth.authenticate(r.Context(), r)
	if err != nil {
		s.fail(w, err)
		return
	}
	if p.Role != api.RoleAdmin {
		s.fail(w, api.Errorf(http.StatusForbidden, "token %s (%s) may not read the cluster's state", p.Token, p.Role))
		return
	}
	ctx := r.Context()
	var out api.Cluster
	// The election's first key by creation is the leader's.
	resp, err := s.st.Client().Get(ctx, s.st.Root()+"leader/", append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
	if err != nil {
		s.fail(w, err)
		return
	}
	if len(resp.Kvs) > 0 {
		out.Leader = string(resp.Kvs[0].Value)
	}
	ml, err := s.st.Client().MemberList(ctx)
	if err != nil {
		s.fail(w, err)
		return
	}
	for _, m := range ml.Members {
		out.Etcd = append(out.Etcd, api.EtcdMember{Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs})
	}
	slices.SortFunc(out.Etcd, func(a, b api.EtcdMember) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	writeJSON(w, http.StatusOK, out)
}
