package api

import (
	"sort"
	"strings"
)

// Requirement is one term of a label selector.
type Requirement struct {
	Key string
	Op  string // ==, != or exists
	Val string
}

// Selector is a conjunction of label requirements: "app=web,tier!=db,canary".
type Selector []Requirement

// ParseSelector parses the ?labels= query value.
func ParseSelector(s string) (Selector, error) {
	var sel Selector
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, term := range strings.Split(s, ",") {
		term = strings.TrimSpace(term)
		var r Requirement
		if k, v, ok := strings.Cut(term, "!="); ok {
			r = Requirement{Key: k, Op: OpNotEqual, Val: v}
		} else if k, v, ok := strings.Cut(term, "=="); ok {
			r = Requirement{Key: k, Op: OpEqual, Val: v}
		} else if k, v, ok := strings.Cut(term, "="); ok {
			r = Requirement{Key: k, Op: OpEqual, Val: v}
		} else {
			r = Requirement{Key: term, Op: OpExists}
		}
		if err := validLabelKey(r.Key); err != "" {
			return nil, &FieldError{Field: "labels", Message: "selector term " + term + ": " + err}
		}
		if err := validLabelValue(r.Val); err != "" {
			return nil, &FieldError{Field: "labels", Message: "selector term " + term + ": " + err}
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// Matches reports whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s {
		v, ok := labels[r.Key]
		switch r.Op {
		case OpEqual:
			if !ok || v != r.Val {
				return false
			}
		case OpNotEqual:
			if ok && v == r.Val {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		}
	}
	return true
}

// FormatLabels renders labels as "k=v,k=v", sorted.
func FormatLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + l[k])
	}
	return b.String()
}
