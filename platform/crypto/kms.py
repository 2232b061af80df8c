"""The production key provider: AWS KMS through boto3.

Each method is the KMS call the :class:`~celeriac.platform.crypto.keys.KeyProvider`
docstring maps it to. Two modes (``keys.mode``, docs/adr/0008-kms-and-s3.md):

* ``per_tenant``: every tenant has a KMS key of its own, tagged with the tenant id and
  aliased ``<alias prefix><tenant id>`` (``alias/celeriac/tenant/<id>``). Data keys are
  generated under the alias, so finding a tenant's key costs no call. Deleting the tenant
  disables the key and schedules its deletion: from then on KMS refuses ``Decrypt`` of
  every data key it ever wrapped (crypto-shredding).
* ``pooled``: every tenant shares one key (``keys.kms_pooled_key_id``). The tenant id is
  still in every data key's encryption context, so KMS refuses to unwrap one tenant's data
  key for another; but the shared key is never destroyed, so deleting a tenant removes its
  objects and cannot shred copies of them.

In both modes the encryption context (``{"tenant_id": ...}``, set by the envelope) is
bound to the wrapped key by KMS: ``Decrypt`` with another tenant's context fails.

KMS errors become the crypto errors callers handle: a disabled, pending-deletion or
unknown key is :class:`KeyUnavailable` (with a message that says the tenant's key was
destroyed, which is what it means here); a ciphertext that does not authenticate is
:class:`DecryptionFailed`. Throttling and network errors are left to botocore's retries
(standard mode) and then propagate unchanged: they are transient, not a verdict on the data.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import ClientError

from celeriac.platform.crypto.errors import DecryptionFailed, KeyOperationRefused, KeyUnavailable
from celeriac.platform.crypto.keys import DataKey, EncryptionContext
from celeriac.platform.metrics import kms_called

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

    from celeriac.platform.settings import Settings

PER_TENANT = "per_tenant"
POOLED = "pooled"

# Codes KMS answers when the key exists no more, or no longer may be used.
_UNAVAILABLE = {
    "NotFoundException",
    "DisabledException",
    "KMSInvalidStateException",
    "KeyUnavailableException",
}
_NOT_AUTHENTIC = {"InvalidCiphertextException", "IncorrectKeyException"}
# Decrypt of a ciphertext that names a key this account may not use: from the platform's
# side indistinguishable from a tampered key reference (as in the local keyring).
_FOREIGN_KEY = "AccessDeniedException"


class KmsKeyProvider:
    """:class:`~celeriac.platform.crypto.keys.KeyProvider` on AWS KMS."""

    def __init__(
        self,
        client: KMSClient,
        *,
        mode: str = PER_TENANT,
        alias_prefix: str = "alias/celeriac/tenant/",
        tenant_tag_key: str = "celeriac:tenant",
        pooled_key_id: str | None = None,
        deletion_window_days: int = 30,
    ) -> None:
        if mode not in (PER_TENANT, POOLED):
            raise ValueError(f"unknown key mode {mode!r}")
        if mode == POOLED and not pooled_key_id:
            raise ValueError("pooled mode needs the shared key's id")
        if not 7 <= deletion_window_days <= 30:
            raise ValueError("KMS deletion windows are 7 to 30 days")
        self.client = client
        self.mode = mode
        self.alias_prefix = alias_prefix
        self.tenant_tag_key = tenant_tag_key
        self.pooled_key_id = pooled_key_id
        self.deletion_window_days = deletion_window_days
        self._pooled_arn: str | None = None
        self._lock = threading.Lock()

    def alias_of(self, tenant_id: str) -> str:
        """``alias/celeriac/tenant/<tenant_id>``."""
        if not tenant_id:
            raise ValueError("tenant_id must not be empty")
        return f"{self.alias_prefix}{tenant_id}"

    def _call(self, operation: str) -> KMSClient:
        """The client, for one call of ``operation`` (counted: celeriac_kms_calls_total)."""
        kms_called(operation)
        return self.client

    # -- KeyProvider ---------------------------------------------------------------

    def create_tenant_key(self, tenant_id: str) -> str:
        """Per tenant: ``CreateKey`` (tenant tag) + ``CreateAlias`` + ``EnableKeyRotation``,
        returning the key's ARN; an existing enabled key under the alias is returned as is,
        so a retried tenant creation makes no second key. Pooled: the shared key's ARN."""
        if self.mode == POOLED:
            return self._pooled_key_arn()
        alias = self.alias_of(tenant_id)
        existing = self._describe(alias, missing_ok=True)
        if existing is not None:
            if existing["KeyState"] == "Enabled":
                return str(existing["Arn"])
            raise KeyUnavailable(
                f"tenant {tenant_id!r}: its KMS key {existing['Arn']} is {existing['KeyState']}"
            )
        created = self._call("create_key").create_key(
            Description=f"Celeriac tenant {tenant_id}",
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Tags=[{"TagKey": self.tenant_tag_key, "TagValue": tenant_id}],
        )["KeyMetadata"]
        try:
            self._call("create_alias").create_alias(AliasName=alias, TargetKeyId=created["KeyId"])
        except ClientError as exc:
            if _code(exc) != "AlreadyExistsException":
                raise
            # Another process created the tenant's key first: keep theirs, drop ours.
            self._schedule_deletion(created["Arn"])
            return self.create_tenant_key(tenant_id)
        # Yearly automatic rotation on top of on-demand rotation (admin API).
        self._call("enable_key_rotation").enable_key_rotation(KeyId=created["KeyId"])
        return str(created["Arn"])

    def tenant_key_id(self, tenant_id: str) -> str:
        """The alias (per tenant) or the shared key: no KMS call."""
        if self.mode == POOLED:
            assert self.pooled_key_id is not None
            return self.pooled_key_id
        return self.alias_of(tenant_id)

    def generate_data_key(self, key_id: str, context: EncryptionContext) -> DataKey:
        """``GenerateDataKey`` (AES_256) bound to ``context``."""
        try:
            answer = self._call("generate_data_key").generate_data_key(
                KeyId=key_id, KeySpec="AES_256", EncryptionContext=dict(context)
            )
        except ClientError as exc:
            raise _crypto_error(exc, f"key {key_id}") from None
        return DataKey(
            plaintext=answer["Plaintext"], wrapped=answer["CiphertextBlob"], key_id=answer["KeyId"]
        )

    def decrypt_data_key(self, wrapped: bytes, context: EncryptionContext) -> bytes:
        """``Decrypt`` of a wrapped data key with exactly the context it was made with."""
        try:
            answer = self._call("decrypt").decrypt(
                CiphertextBlob=wrapped, EncryptionContext=dict(context)
            )
        except ClientError as exc:
            if _code(exc) == _FOREIGN_KEY:
                raise DecryptionFailed(
                    f"wrapped data key names a KMS key this platform cannot use ({_FOREIGN_KEY})"
                ) from None
            raise _crypto_error(exc, "the data key's KMS key") from None
        return answer["Plaintext"]

    def rotate_tenant_key(self, key_id: str) -> None:
        """``RotateKeyOnDemand``: KMS adds new backing key material for new data keys and
        keeps the old material for ``Decrypt``, so nothing needs re-encrypting."""
        if self.mode == POOLED:
            raise KeyOperationRefused(
                "keys.mode=pooled: the shared key serves every tenant; rotate it in KMS "
                "(it rotates for all tenants at once)"
            )
        try:
            self._call("rotate_key_on_demand").rotate_key_on_demand(KeyId=self._key_arn(key_id))
        except ClientError as exc:
            if _code(exc) in ("LimitExceededException", "ConflictException"):
                raise KeyOperationRefused(f"KMS refused the rotation: {_message(exc)}") from None
            raise _crypto_error(exc, f"key {key_id}") from None

    def destroy_tenant_key(self, key_id: str) -> None:
        """``DisableKey`` (effective at once) + ``ScheduleKeyDeletion`` after the window.

        Idempotent: a key already pending deletion, or gone, is left as it is. In pooled
        mode nothing is destroyed: the key is every tenant's.
        """
        if self.mode == POOLED:
            return
        self._schedule_deletion(key_id)

    # -- inspection ----------------------------------------------------------------

    def key_state(self, key_id: str) -> dict[str, Any] | None:
        """``DescribeKey``'s metadata (state, deletion date), or None if the key is gone."""
        return self._describe(key_id, missing_ok=True)

    # -- internals -----------------------------------------------------------------

    def _schedule_deletion(self, key_id: str) -> None:
        metadata = self._describe(key_id, missing_ok=True)
        if metadata is None or metadata["KeyState"] == "PendingDeletion":
            return
        bare_id = metadata["KeyId"]  # every KMS implementation takes the bare id
        if metadata["KeyState"] == "Enabled":
            self._call("disable_key").disable_key(KeyId=bare_id)
        try:
            self._call("schedule_key_deletion").schedule_key_deletion(
                KeyId=bare_id, PendingWindowInDays=self.deletion_window_days
            )
        except ClientError as exc:
            # A concurrent call got there first.
            if _code(exc) != "KMSInvalidStateException":
                raise

    def _pooled_key_arn(self) -> str:
        with self._lock:
            if self._pooled_arn is not None:
                return self._pooled_arn
        assert self.pooled_key_id is not None
        arn = self._key_arn(self.pooled_key_id)
        with self._lock:
            self._pooled_arn = arn
        return arn

    def _key_arn(self, key_id: str) -> str:
        arn = self._key_arn_if_any(key_id)
        if arn is None:
            raise KeyUnavailable(f"KMS key {key_id} does not exist")
        return arn

    def _key_arn_if_any(self, key_id: str) -> str | None:
        """The key's ARN (``DescribeKey`` resolves an alias or a bare id), None if gone."""
        if key_id.startswith("arn:") and ":key/" in key_id:
            return key_id
        metadata = self._describe(key_id, missing_ok=True)
        return None if metadata is None else str(metadata["Arn"])

    def _describe(self, key_id: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        try:
            metadata = self._call("describe_key").describe_key(KeyId=key_id)["KeyMetadata"]
        except ClientError as exc:
            if missing_ok and _code(exc) == "NotFoundException":
                return None
            raise _crypto_error(exc, f"key {key_id}") from None
        return dict(metadata)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _crypto_error(exc: ClientError, what: str) -> Exception:
    code = _code(exc)
    if code in _UNAVAILABLE or code == _FOREIGN_KEY:
        return KeyUnavailable(
            f"{what} is unavailable ({code}: {_message(exc)}): the tenant's key was "
            "destroyed (tenant deleted), disabled, or is not this platform's to use"
        )
    if code in _NOT_AUTHENTIC:
        return DecryptionFailed(
            f"wrapped data key does not authenticate under this encryption context ({code})"
        )
    return exc


def kms_client(settings: Settings) -> KMSClient:
    """A boto3 KMS client for ``settings`` (credentials: boto3's usual chain, e.g. IRSA)."""
    import boto3  # noqa: PLC0415 - boto3 loads only where KMS is used

    return boto3.client(
        "kms",
        region_name=settings.kms_region,
        endpoint_url=settings.keys.kms_endpoint_url,
        config=Config(
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=5,
            read_timeout=10,
            max_pool_connections=50,
        ),
    )


def kms_key_provider_from_settings(settings: Settings) -> KmsKeyProvider:
    keys = settings.keys
    return KmsKeyProvider(
        kms_client(settings),
        mode=keys.mode,
        alias_prefix=keys.kms_alias_prefix,
        tenant_tag_key=keys.kms_tenant_tag_key,
        pooled_key_id=keys.kms_pooled_key_id,
        deletion_window_days=keys.deletion_window_days,
    )
