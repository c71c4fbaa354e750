package image

import (
	"reflect"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestApplyChange(t *testing.T) {
	cases := []struct {
		change string
		want   ocispec.ImageConfig
	}{
		{`CMD ["sh", "-c", "echo hi"]`, ocispec.ImageConfig{Cmd: []string{"sh", "-c", "echo hi"}}},
		{`CMD echo hi`, ocispec.ImageConfig{Cmd: []string{"/bin/sh", "-c", "echo hi"}}},
		{`ENTRYPOINT ["/app"]`, ocispec.ImageConfig{Entrypoint: []string{"/app"}}},
		{`ENV A=b C="d e"`, ocispec.ImageConfig{Env: []string{"A=b", "C=d e"}}},
		{`ENV LEGACY some value`, ocispec.ImageConfig{Env: []string{"LEGACY=some value"}}},
		{`LABEL org.x=y`, ocispec.ImageConfig{Labels: map[string]string{"org.x": "y"}}},
		{`WORKDIR /srv`, ocispec.ImageConfig{WorkingDir: "/srv"}},
		{`USER 1000:1000`, ocispec.ImageConfig{User: "1000:1000"}},
		{`EXPOSE 80 53/udp`, ocispec.ImageConfig{ExposedPorts: map[string]struct{}{"80/tcp": {}, "53/udp": {}}}},
		{`VOLUME /data`, ocispec.ImageConfig{Volumes: map[string]struct{}{"/data": {}}}},
		{`STOPSIGNAL SIGINT`, ocispec.ImageConfig{StopSignal: "SIGINT"}},
	}
	for _, c := range cases {
		t.Run(c.change, func(t *testing.T) {
			var got ocispec.ImageConfig
			if err := ApplyChange(&got, c.change); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
	for _, bad := range []string{"RUN make", "CMD", `CMD ["unterminated`, "WORKDIR relative", "EXPOSE http", `ENV A="x`} {
		var cfg ocispec.ImageConfig
		if err := ApplyChange(&cfg, bad); err == nil {
			t.Errorf("ApplyChange(%q) accepted", bad)
		}
	}
}

func TestSelectManifest(t *testing.T) {
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{
		{Digest: "sha256:a", Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}},
		{Digest: "sha256:b", Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{Digest: "sha256:c", Platform: &ocispec.Platform{OS: "windows", Architecture: "amd64"}},
	}}
	for p, want := range map[string]string{"linux/amd64": "sha256:b", "linux/arm64": "sha256:a", "linux/arm64/v8": "sha256:a", "windows/amd64": "sha256:c"} {
		pl, err := ParsePlatform(p)
		if err != nil {
			t.Fatal(err)
		}
		d, err := SelectManifest(idx, pl)
		if err != nil || string(d.Digest) != want {
			t.Errorf("%s: %s %v, want %s", p, d.Digest, err, want)
		}
	}
	if _, err := SelectManifest(idx, Platform{OS: "linux", Architecture: "s390x"}); err == nil {
		t.Error("missing platform selected something")
	}
	if _, err := ParsePlatform("linux"); err == nil {
		t.Error(`ParsePlatform("linux") accepted`)
	}
}

func TestParseManifestRejectsWhatBerthCannotUse(t *testing.T) {
	for name, m := range map[string]string{
		"schema 1":      `{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}`,
		"not json":      `{`,
		"bad digest":    `{"schemaVersion":2,"config":{"digest":"sha256:zz"}}`,
		"foreign layer": `{"schemaVersion":2,"config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},"layers":[{"mediaType":"text/plain","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}`,
	} {
		if _, _, err := parseManifest([]byte(m)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
