package runtime

import "testing"

func TestContainerIDs(t *testing.T) {
	for id, want := range map[string]bool{
		"web-1": true, "a.b_c+D9": true, "...": true,
		"": false, ".": false, "..": false, "a/b": false, "a b": false, "ü": false, "a\n": false,
	} {
		if got := validID(id) == nil; got != want {
			t.Errorf("validID(%q) ok=%v, want %v", id, got, want)
		}
	}
}
