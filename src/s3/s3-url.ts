// s3://BUCKET/KEY, as the aws CLI writes it. The bucket follows S3's naming
// rules loosely (3 to 63 characters of lowercase letters, digits, dots and
// hyphens) so a typo is refused here rather than by the store; the key is
// everything after the first slash, verbatim (no percent-decoding).
import { S3UrlError } from './errors.js';

export interface S3Location {
  readonly bucket: string;
  readonly key: string;
}

export function isS3Url(text: string): boolean {
  return text.startsWith('s3://');
}

export function parseS3Url(text: string): S3Location {
  if (!isS3Url(text)) throw new S3UrlError(text, 'it does not start with s3://');
  const rest = text.slice('s3://'.length);
  const slash = rest.indexOf('/');
  if (slash <= 0) throw new S3UrlError(text, slash === 0 ? 'the bucket is missing' : 'the key is missing (s3://BUCKET/KEY)');
  const bucket = rest.slice(0, slash);
  const key = rest.slice(slash + 1);
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new S3UrlError(text, `bucket ${JSON.stringify(bucket)} is not 3 to 63 lowercase letters, digits, dots and hyphens`);
  if (key === '' || key.endsWith('/')) throw new S3UrlError(text, 'the key names no object (it is empty or ends with /)');
  if (Buffer.byteLength(key, 'utf8') > 1024) throw new S3UrlError(text, 'the key is longer than 1024 bytes');
  return { bucket, key };
}

export function formatS3Url(location: S3Location): string {
  return `s3://${location.bucket}/${location.key}`;
}
