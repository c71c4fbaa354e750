package agent

import (
	"context"
	"reflect"

	"github.com/berth-dev/berth/api"
)

// A run's container is made while the transaction that places it on this
// node is written, when the control plane runs in the node's process
// (berth up): that transaction and the watch that brings the placement
// here take a millisecond, about as long as making the container (its
// snapshot, rootfs mounts, bundle). Nothing runs before the placement is
// stored: the watch's event starts what was prepared (sync), and a
// transaction that fails removes it.

// preparation is one container being made ahead of its placement.
type preparation struct {
	spec ContainerSpec
	done chan struct{} // closed once Create has returned
	id   string
	err  error
}

// Prepare begins making in's container, in is to be placed on this node by
// a transaction the caller is about to write; stored says how that went.
// Another node's instance, or one this node prepares already, is left
// alone.
func (n *Node) Prepare(in *api.Instance) (stored func(ok bool)) {
	if in.Spec.Node != n.cfg.Name {
		return func(bool) {}
	}
	spec, err := InstanceSpec(in, n.cfg.Name, n.cfg.Network)
	if err != nil {
		return func(bool) {}
	}
	key := in.Tenant + "/" + in.Name
	p := &preparation{spec: spec, done: make(chan struct{})}
	n.mu.Lock()
	if _, busy := n.prepared[key]; busy {
		n.mu.Unlock()
		return func(bool) {}
	}
	n.prepared[key] = p
	n.mu.Unlock()
	go func() {
		defer close(p.done)
		p.id, p.err = n.cfg.Agent.Create(context.Background(), spec)
	}()
	return func(ok bool) {
		if !ok {
			go n.dropPrepared(key, p)
		}
	}
}

// discardPrepared removes what was prepared for key, if anything: the
// instance as stored asks for something else than a new container.
func (n *Node) discardPrepared(key string) {
	n.mu.Lock()
	p := n.prepared[key]
	n.mu.Unlock()
	if p != nil {
		go n.dropPrepared(key, p)
	}
}

// takePrepared returns the container prepared for in, made and matching
// its spec; false leaves the container to be made as usual (a
// preparation that failed or no longer matches is removed).
func (n *Node) takePrepared(ctx context.Context, in *api.Instance) (string, bool) {
	key := in.Tenant + "/" + in.Name
	n.mu.Lock()
	p := n.prepared[key]
	delete(n.prepared, key)
	n.mu.Unlock()
	if p == nil {
		return "", false
	}
	<-p.done
	spec, err := InstanceSpec(in, n.cfg.Name, n.cfg.Network)
	if p.err == nil && err == nil && reflect.DeepEqual(spec, p.spec) {
		return p.id, true
	}
	if p.id != "" {
		n.removeContainer(ctx, p.id)
	}
	return "", false
}

// dropPrepared removes the container of preparation p of key unless sync
// took it.
func (n *Node) dropPrepared(key string, p *preparation) {
	n.mu.Lock()
	mine := n.prepared[key] == p
	if mine {
		delete(n.prepared, key)
	}
	n.mu.Unlock()
	if !mine {
		return
	}
	<-p.done
	if p.id != "" {
		n.removeContainer(context.Background(), p.id)
	}
}

// forgetPrepared waits for every preparation and forgets them: a resync
// then finds their containers among the agent's and keeps or removes each
// as the control plane's list says.
func (n *Node) forgetPrepared() {
	n.mu.Lock()
	ps := n.prepared
	n.prepared = map[string]*preparation{}
	n.mu.Unlock()
	for _, p := range ps {
		<-p.done
	}
}
