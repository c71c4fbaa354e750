package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is the body of every failed request, and what the client returns.
type Error struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Field names the offending field of an invalid body ("spec.replicas").
	Field string `json:"field,omitempty"`
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s (%d): %s: %s", e.Reason, e.Code, e.Field, e.Message)
	}
	return fmt.Sprintf("%s (%d): %s", e.Reason, e.Code, e.Message)
}

// Error reasons, one per status code the API answers with.
const (
	ReasonInvalid      = "Invalid"
	ReasonUnauthorized = "Unauthorized"
	ReasonForbidden    = "Forbidden"
	ReasonNotFound     = "NotFound"
	ReasonConflict     = "Conflict"
	ReasonExists       = "AlreadyExists"
	ReasonGone         = "Gone"
	ReasonTooLarge     = "TooLarge"
	ReasonInternal     = "Internal"
)

// Errorf builds an *Error with the reason that belongs to code.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Reason: reasonFor(code), Message: fmt.Sprintf(format, args...)}
}

func reasonFor(code int) string {
	switch code {
	case http.StatusBadRequest:
		return ReasonInvalid
	case http.StatusUnauthorized:
		return ReasonUnauthorized
	case http.StatusForbidden:
		return ReasonForbidden
	case http.StatusNotFound:
		return ReasonNotFound
	case http.StatusConflict:
		return ReasonConflict
	case http.StatusGone:
		return ReasonGone
	case http.StatusRequestEntityTooLarge:
		return ReasonTooLarge
	}
	return ReasonInternal
}

// FieldError is a validation or decoding failure of one field.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

// AsError turns any error into the *Error the API answers with.
func AsError(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return &Error{Code: http.StatusBadRequest, Reason: ReasonInvalid, Message: fe.Message, Field: fe.Field}
	}
	return &Error{Code: http.StatusInternalServerError, Reason: ReasonInternal, Message: err.Error()}
}

// Code returns the HTTP status of err, 0 if it carries none.
func Code(err error) int {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return 0
}

// IsNotFound reports a 404.
func IsNotFound(err error) bool { return Code(err) == http.StatusNotFound }

// IsConflict reports a 409 (a version conflict or an existing name).
func IsConflict(err error) bool { return Code(err) == http.StatusConflict }

// IsInvalid reports a 400.
func IsInvalid(err error) bool { return Code(err) == http.StatusBadRequest }
