"""One class per HealthImaging error code, named exactly like the code, so the
HTTP layer can render ``x-amzn-ErrorType`` and botocore raises the real
``ClientError``."""

from __future__ import annotations


class HealthImagingError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> str:
        return type(self).__name__


class ValidationException(HealthImagingError):
    status = 400


class BadRequestException(HealthImagingError):
    status = 400


class ServiceQuotaExceededException(HealthImagingError):
    status = 402


class AccessDeniedException(HealthImagingError):
    status = 403


class ResourceNotFoundException(HealthImagingError):
    status = 404


class NotAcceptableException(HealthImagingError):
    status = 406


class ConflictException(HealthImagingError):
    status = 409


class UnsupportedMediaTypeException(HealthImagingError):
    """A DICOMweb request body of a media type the operation does not take
    (PS3.18's 415; AWS documents no name for it)."""

    status = 415


class ThrottlingException(HealthImagingError):
    status = 429


class InternalServerException(HealthImagingError):
    status = 500


class ServiceUnavailableException(HealthImagingError):
    """The local service is stopping; the client may retry once it is back."""

    status = 503


# Refusals before any operation runs, named as AWS's front door names them for
# rest-json services (API Gateway style, all 403).
class MissingAuthenticationTokenException(HealthImagingError):
    status = 403


class IncompleteSignatureException(HealthImagingError):
    status = 403


class UnrecognizedClientException(HealthImagingError):
    status = 403


class InvalidSignatureException(HealthImagingError):
    status = 403
