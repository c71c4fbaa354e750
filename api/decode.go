package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// MaxBodyBytes bounds every request body the server reads.
const MaxBodyBytes = 1 << 20

// Decode reads one JSON value of at most limit bytes from r into v, strictly:
// unknown fields, trailing data and type mismatches are errors naming the
// field. It does not validate the value; see Validate.
func Decode(r io.Reader, limit int64, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return Errorf(http.StatusRequestEntityTooLarge, "body larger than %d bytes", mbe.Limit)
	}
	if err != nil {
		return Errorf(http.StatusBadRequest, "read body: %v", err)
	}
	if int64(len(data)) > limit {
		return Errorf(http.StatusRequestEntityTooLarge, "body larger than %d bytes", limit)
	}
	return DecodeBytes(data, v)
}

// DecodeBytes is Decode for a body already in memory.
func DecodeBytes(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return &FieldError{Message: "empty body"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return &FieldError{Message: "trailing data after the JSON value"}
	}
	return nil
}

func decodeError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var fe *FieldError
	switch {
	case errors.As(err, &syn):
		return &FieldError{Message: fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, syn)}
	case errors.As(err, &typ):
		return &FieldError{Field: strings.TrimPrefix(typ.Field, "Meta."), Message: fmt.Sprintf("expected %s, got JSON %s", typ.Type, typ.Value)}
	case errors.As(err, &fe):
		return fe
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return &FieldError{Message: "malformed JSON: unexpected end of body"}
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return &FieldError{Field: strings.Trim(f, `"`), Message: "unknown field"}
	}
	return &FieldError{Message: strings.TrimPrefix(msg, "json: ")}
}
